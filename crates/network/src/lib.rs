//! Service networking on a node: the service proxy (kernel rules from
//! Services and EndpointSlices), cluster DNS and the built-in Ingress
//! controller.
