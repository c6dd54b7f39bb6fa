//! Service networking on a node: the service proxy (kernel rules from
//! Services and EndpointSlices), NetworkPolicy enforcement, cluster DNS and
//! the built-in Ingress controller.

pub mod dns;
pub mod ingress;
pub mod iptables;
pub mod listeners;
pub mod netpol;
pub mod proxy;
