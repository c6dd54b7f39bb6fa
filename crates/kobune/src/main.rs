//! `kobune`: the command line. `kobune server` runs a whole cluster's
//! control plane on this machine.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kobune_controllers::runtime::Source;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// mimalloc (built without transparent huge pages, which would add ~10 MiB
/// of idle RSS): the API server allocates many small JSON values per
/// request, and glibc's malloc spent about a fifth of its CPU on them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "kobune",
    version,
    about = "A Kubernetes-compatible cluster in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at startup
enum Command {
    /// Run the control plane: API server and datastore.
    Server(ServerArgs),
    /// Images on this machine's node: import archives, list, export, remove.
    Images(ImagesArgs),
    /// Join a server as this machine's node (containerd), or as simulated nodes (--simulate N).
    Agent(AgentArgs),
    /// Stop every pod a stopped server's or agent's node left running, with
    /// its containerd, pod network, routes and Service rules (k3s-killall.sh).
    Killall(KillallArgs),
    /// Holds a server's Ingress and cluster DNS sockets while it restarts
    /// (started by `kobune server`; stopped by `kobune killall`).
    #[command(hide = true)]
    ListenerKeeper {
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct KillallArgs {
    /// The data directory of a `kobune server` or of a `kobune agent`
    /// (default: the server's).
    #[arg(long, env = "KOBUNE_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ImagesArgs {
    /// The server's data directory (its containerd socket is
    /// DATA_DIR/agent/containerd/containerd.sock).
    #[arg(long, env = "KOBUNE_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: ImagesCommand,
}

#[derive(Subcommand)]
enum ImagesCommand {
    /// Import OCI or docker-archive tars; prints each imported image name.
    Import {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List the node's images (like `crictl images`).
    #[command(alias = "list")]
    Ls,
    /// Write images to one OCI archive (also readable by `docker load` and
    /// `skopeo copy oci-archive:FILE`).
    #[command(alias = "save")]
    Export {
        file: PathBuf,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove images from the node (like `crictl rmi`).
    #[command(alias = "rmi")]
    Rm {
        #[arg(required = true)]
        images: Vec<String>,
    },
}

/// `kobune agent`: joins a server from another process or machine.
#[derive(clap::Args)]
struct AgentArgs {
    /// The API server to join, https://HOST[:PORT].
    #[arg(long, env = "KOBUNE_URL")]
    server: Option<String>,
    /// The server's token (its --token, or DATA_DIR/tls/token on the server).
    #[arg(long, env = "KOBUNE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the token instead of --token.
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// The cluster CA the server's certificate must chain to (DATA_DIR/tls/ca.crt on the server).
    #[arg(long)]
    server_ca: Option<PathBuf>,
    /// Register N simulated nodes whose pods run without processes (like kwok)
    /// instead of joining this machine.
    #[arg(long, default_value_t = 0)]
    simulate: usize,
    /// Simulated nodes are named PREFIX-0 .. PREFIX-(N-1) (default: this machine's hostname).
    #[arg(long)]
    node_name_prefix: Option<String>,
    /// Agent state: its containerd, pod logs and volumes.
    #[arg(
        long,
        env = "KOBUNE_AGENT_DATA_DIR",
        default_value = "/var/lib/kobune-agent"
    )]
    data_dir: PathBuf,
    /// This machine's node name (default: the hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// The node's InternalIP: the address the server reaches the kubelet
    /// port on and other nodes route this node's pod CIDR to.
    #[arg(long, default_value = "127.0.0.1")]
    node_ip: std::net::IpAddr,
    /// Port of the kubelet API (logs, exec, attach, port-forward, stats).
    #[arg(long, default_value_t = 10250)]
    kubelet_port: u16,
    /// No service proxy or NetworkPolicy rules on this node (as needed when
    /// a server with its own node shares the machine and its iptables).
    #[arg(long)]
    disable_kube_proxy: bool,
    /// Pod network range (the server's --cluster-cidr).
    #[arg(long, default_value = "10.42.0.0/16")]
    cluster_cidr: String,
    /// Service virtual IP range (the server's --service-cidr).
    #[arg(long, default_value = "10.43.0.0/16")]
    service_cidr: String,
    /// Cluster DNS Service IP in pods' resolv.conf.
    #[arg(long, default_value = "10.43.0.10")]
    cluster_dns: std::net::Ipv4Addr,
    /// Cluster domain.
    #[arg(long, default_value = kobune_network::dns::DEFAULT_DOMAIN)]
    cluster_domain: String,
    /// The resolv.conf of dnsPolicy=Default pods (default as for `kobune server`).
    #[arg(long)]
    resolv_conf: Option<PathBuf>,
}

/// `kobune killall`: what a node agent left running when it stopped.
async fn killall(args: KillallArgs) -> Result<()> {
    use kobune_network::listeners;
    let dir = std::path::absolute(args.data_dir.unwrap_or_else(default_data_dir))?;
    const RUNNING: &str =
        "kobune killall stops what a stopped node left; stop `kobune server`/`kobune agent` first";
    anyhow::ensure!(!listeners::server_running(&dir), RUNNING);
    let keeper = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || listeners::stop_keeper(&dir)).await?
    };
    let keeper = match keeper {
        Ok(stopped) => stopped,
        Err(e) => {
            tracing::warn!("stopping the listener keeper: {e}");
            false
        }
    };
    if keeper {
        println!("closed the Ingress and DNS sockets held for the server");
    }
    // A server's node lives under DATA_DIR/agent; an agent's is DATA_DIR.
    let node_dir = if dir.join("agent").join("containerd").exists() {
        dir.join("agent")
    } else {
        dir.clone()
    };
    if !node_dir.join("containerd").exists() {
        anyhow::ensure!(
            keeper,
            "{} holds no node (no containerd/ in it or in agent/)",
            dir.display()
        );
        return Ok(());
    }
    let lock = kobune_agent::node::lock_data_dir(&node_dir).context(RUNNING)?;
    kobune_agent::join::cleanup(&node_dir).await;
    let r = tokio::task::spawn_blocking(|| {
        kobune_network::netpol::cleanup_rules()?;
        kobune_network::proxy::cleanup_rules()
    })
    .await?;
    if let Err(e) = r {
        tracing::warn!("removing Service and NetworkPolicy rules: {e:#}");
    }
    drop(lock);
    println!(
        "stopped the pods, containerd, pod network and Service rules of the node in {}",
        node_dir.display()
    );
    Ok(())
}

async fn agent(args: AgentArgs) -> Result<()> {
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("reading the token from {}", f.display()))?,
        (None, None) => anyhow::bail!("pass the server's token with --token or --token-file"),
    };
    let token = token.trim().to_string();
    let (server, server_ca) = match (&args.server, &args.server_ca) {
        (Some(s), Some(c)) => (s.clone(), c.clone()),
        _ => anyhow::bail!("pass --server and --server-ca"),
    };
    anyhow::ensure!(
        args.simulate > 0 || args.node_name_prefix.is_none(),
        "--node-name-prefix names simulated nodes (--simulate N); this machine's node is named with --node-name"
    );
    let ca = std::fs::read(&server_ca)
        .with_context(|| format!("reading --server-ca {}", server_ca.display()))?;
    let client = Arc::new(
        kobune_agent::client::ApiClient::new(&server, &token, &ca)
            .context("setting up the connection to the server")?,
    );
    if args.simulate == 0 {
        return agent_node(args, client, token).await;
    }
    let prefix = args.node_name_prefix.clone().unwrap_or_else(hostname);
    let names = kobune_agent::remote::run_simulated(client.clone(), args.simulate, &prefix)
        .await
        .context("joining the server")?;
    println!(
        "joined {} with {} simulated nodes ({}..{})",
        client.server(),
        names.len(),
        names.first().map(String::as_str).unwrap_or_default(),
        names.last().map(String::as_str).unwrap_or_default()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: leaving; the nodes stay registered"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: leaving; the nodes stay registered"),
    }
    Ok(())
}

/// `kobune agent` joining this machine as a real node.
async fn agent_node(
    args: AgentArgs,
    client: Arc<kobune_agent::client::ApiClient>,
    token: String,
) -> Result<()> {
    let name = args.node_name.clone().unwrap_or_else(hostname);
    let resolv_conf = args
        .resolv_conf
        .clone()
        .unwrap_or_else(kobune_network::dns::default_resolv_conf);
    let cfg = kobune_agent::join::JoinConfig {
        name: name.clone(),
        data_dir: std::path::absolute(&args.data_dir)?,
        node_ip: args.node_ip.to_string(),
        kubelet_port: args.kubelet_port,
        token,
        dns: kobune_agent::dns::PodDnsSettings {
            cluster_dns: vec![args.cluster_dns.to_string()],
            cluster_domain: args.cluster_domain.clone(),
            resolv_conf: Some(resolv_conf),
        },
    };
    let joined = kobune_agent::join::join(client.clone(), cfg)
        .await
        .with_context(|| {
            format!(
                "joining {} as node {name:?} (needs root, containerd, runc and the CNI plugins)",
                client.server()
            )
        })?;
    // kube-proxy's role, and NetworkPolicy rules for this node's pods
    // (after the proxy, whose start flushes every KOBUNE- chain).
    let mut network = None;
    if !args.disable_kube_proxy {
        let source: Arc<dyn Source> = joined.api.clone();
        let cfg = kobune_network::proxy::ProxyConfig {
            node_name: name.clone(),
            cluster_cidr: args.cluster_cidr.clone(),
            service_cidr: args.service_cidr.clone(),
            bridge: joined.bridge.clone(),
        };
        let started = async {
            let proxy = kobune_network::proxy::Proxy::start(source.clone(), None, cfg)
                .await
                .context("starting the service proxy (needs iptables)")?;
            let netpol = kobune_network::netpol::NetworkPolicies::start(source, name.clone())
                .await
                .context("starting network policy enforcement")?;
            anyhow::Ok((proxy, netpol))
        }
        .await;
        match started {
            Ok(n) => network = Some(n),
            Err(e) => {
                joined.shutdown().await;
                return Err(e);
            }
        }
    }
    println!(
        "joined {} as node {name} (pod CIDR {}, bridge {}, containerd under {})",
        client.server(),
        joined.pod_cidr,
        joined.bridge,
        args.data_dir.join("containerd").display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping the agent"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: stopping the agent"),
    }
    if let Some((proxy, netpol)) = network {
        netpol.stop().await;
        proxy.stop().await;
    }
    joined.shutdown().await;
    println!(
        "agent stopped; its pods keep running (the next start adopts them; `kobune killall --data-dir {}` stops them)",
        args.data_dir.display()
    );
    Ok(())
}

async fn images(args: ImagesArgs) -> Result<()> {
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    let socket = data_dir
        .join("agent")
        .join("containerd")
        .join("containerd.sock");
    anyhow::ensure!(
        socket.exists(),
        "no containerd socket at {} (is `kobune server --data-dir {}` running with its node agent?)",
        socket.display(),
        data_dir.display()
    );
    use kobune_cri::images as img;
    match args.command {
        ImagesCommand::Import { files } => {
            for name in img::import_files(&socket, &files).await? {
                println!("{name}");
            }
        }
        ImagesCommand::Ls => print!("{}", img::images_table(&img::list(&socket).await?)),
        ImagesCommand::Export { file, images } => img::export(&socket, &file, &images).await?,
        ImagesCommand::Rm { images } => {
            img::remove(&socket, &images).await?;
            for i in images {
                println!("Deleted: {i}");
            }
        }
    }
    Ok(())
}

/// The audit log settings, from the flags and any `--kube-apiserver-arg`.
/// The audit log and DefaultTolerationSeconds settings, from their flags
/// and `--kube-apiserver-arg`.
fn apiserver_options(
    args: &ServerArgs,
) -> Result<(
    Option<kobune_apiserver::audit::Config>,
    kobune_apiserver::admission::DefaultTolerations,
)> {
    let mut path = args.audit_log_path.clone();
    let mut policy = args.audit_policy_file.clone();
    let mut max_size_mb = args.audit_log_maxsize;
    let mut max_backups = args.audit_log_maxbackup;
    let mut tolerations = kobune_apiserver::admission::DefaultTolerations {
        not_ready_seconds: args.default_not_ready_toleration_seconds,
        unreachable_seconds: args.default_unreachable_toleration_seconds,
    };
    for a in &args.kube_apiserver_arg {
        let (k, v) = a
            .split_once('=')
            .with_context(|| format!("--kube-apiserver-arg {a:?}: want KEY=VALUE"))?;
        let number = || format!("--kube-apiserver-arg {k}: {v:?} is not a number");
        match k.trim_start_matches('-') {
            "audit-log-path" => path = Some(v.into()),
            "audit-policy-file" => policy = Some(v.into()),
            "audit-log-maxsize" => max_size_mb = v.parse().with_context(number)?,
            "audit-log-maxbackup" => max_backups = v.parse().with_context(number)?,
            "default-not-ready-toleration-seconds" => {
                tolerations.not_ready_seconds = v.parse().with_context(number)?
            }
            "default-unreachable-toleration-seconds" => {
                tolerations.unreachable_seconds = v.parse().with_context(number)?
            }
            other => anyhow::bail!(
                "--kube-apiserver-arg {other}: not supported by kobune (audit-log-path, audit-policy-file, audit-log-maxsize, audit-log-maxbackup, default-not-ready-toleration-seconds and default-unreachable-toleration-seconds are)"
            ),
        }
    }
    if path.is_none() && policy.is_some() {
        anyhow::bail!("--audit-policy-file needs --audit-log-path");
    }
    let audit = path.map(|path| kobune_apiserver::audit::Config {
        path,
        policy,
        max_size_mb,
        max_backups,
    });
    Ok((audit, tolerations))
}

/// Flags follow k3s's names where the concept is the same.
#[derive(clap::Args)]
struct ServerArgs {
    /// Where state, certificates and the kubeconfig live.
    #[arg(long, env = "KOBUNE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// HTTPS port of the API server.
    #[arg(long, default_value_t = 6443)]
    https_listen_port: u16,
    /// Address the API server listens on.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: std::net::IpAddr,
    /// Where to write the admin kubeconfig (default DATA_DIR/kubeconfig.yaml).
    #[arg(long)]
    write_kubeconfig: Option<PathBuf>,
    /// sqlite://PATH (default DATA_DIR/db/state.db) or http(s)://etcd:2379[,...].
    #[arg(long, default_value = "")]
    datastore_endpoint: String,
    /// Shared secret; also accepted as the admin bearer token.
    #[arg(long, env = "KOBUNE_TOKEN")]
    token: Option<String>,
    /// Extra host names or IPs for the serving certificate.
    #[arg(long = "tls-san")]
    tls_san: Vec<String>,
    /// Run without the node agent on this machine.
    #[arg(long)]
    disable_agent: bool,
    /// Name of this machine's node.
    #[arg(long)]
    node_name: Option<String>,
    /// This node's InternalIP: the address agents on other machines route
    /// its pod CIDR to (127.0.0.1 suits a cluster on one machine).
    #[arg(long, default_value = "127.0.0.1")]
    node_ip: std::net::IpAddr,
    /// Pod network range.
    #[arg(long, default_value = "10.42.0.0/16")]
    cluster_cidr: String,
    /// Service virtual IP range.
    #[arg(long, default_value = "10.43.0.0/16")]
    service_cidr: String,
    /// Register N simulated nodes whose pods run without processes (like kwok), for scale tests.
    #[arg(long, default_value_t = 0)]
    simulate_nodes: usize,
    /// Recent events kept so watches can resume (kube-apiserver's --default-watch-cache-size).
    #[arg(long, default_value_t = kobune_apiserver::cache::DEFAULT_HISTORY)]
    watch_cache_size: usize,
    /// Write an audit log here ("-": standard output), as kube-apiserver's flag.
    #[arg(long)]
    audit_log_path: Option<PathBuf>,
    /// Audit policy (an audit.k8s.io/v1 Policy); without one, every request is logged at Metadata.
    #[arg(long)]
    audit_policy_file: Option<PathBuf>,
    /// Rotate the audit log when it passes this many megabytes (0: never).
    #[arg(long, default_value_t = 0)]
    audit_log_maxsize: u64,
    /// Rotated audit logs to keep (0: all).
    #[arg(long, default_value_t = 0)]
    audit_log_maxbackup: usize,
    /// Seconds a new pod stays on a node that is not ready before it is evicted, unless it
    /// tolerates node.kubernetes.io/not-ready itself (DefaultTolerationSeconds).
    #[arg(long, default_value_t = 300)]
    default_not_ready_toleration_seconds: i64,
    /// As --default-not-ready-toleration-seconds, for an unreachable node.
    #[arg(long, default_value_t = 300)]
    default_unreachable_toleration_seconds: i64,
    /// A kube-apiserver flag as k3s takes it, KEY=VALUE (repeatable); the audit-log-path,
    /// audit-policy-file, audit-log-maxsize, audit-log-maxbackup and default-*-toleration-seconds
    /// keys are understood.
    #[arg(long, value_name = "KEY=VALUE")]
    kube_apiserver_arg: Vec<String>,
    /// HTTP port of the built-in Ingress controller (0: no HTTP listener).
    #[arg(long, default_value_t = 80)]
    ingress_http_port: u16,
    /// HTTPS port of the built-in Ingress controller (0: no HTTPS listener).
    #[arg(long, default_value_t = 443)]
    ingress_https_port: u16,
    /// Run without the built-in Ingress controller (IngressClass `kobune`).
    #[arg(long)]
    disable_ingress: bool,
    /// Run without the scheduler (pods stay Pending unless another scheduler binds them).
    #[arg(long)]
    disable_scheduler: bool,
    /// Cluster DNS Service IP (default: the 10th address of --service-cidr).
    #[arg(long)]
    cluster_dns: Option<std::net::Ipv4Addr>,
    /// Cluster domain.
    #[arg(long, default_value = kobune_network::dns::DEFAULT_DOMAIN)]
    cluster_domain: String,
    /// Upstream nameservers of the cluster DNS, and the resolv.conf of dnsPolicy=Default pods
    /// (default: /etc/resolv.conf, or systemd-resolved's when that names only loopback servers).
    #[arg(long)]
    resolv_conf: Option<PathBuf>,
}

fn default_data_dir() -> PathBuf {
    let is_root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if is_root {
        PathBuf::from("/var/lib/kobune")
    } else {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| ".".into())
            .join(".kobune")
    }
}

async fn server(args: ServerArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let (audit, default_tolerations) = apiserver_options(&args)?;
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    kobune_apiserver::parse_cidr(&args.cluster_cidr).context("--cluster-cidr")?;
    let resolv_conf = args
        .resolv_conf
        .clone()
        .unwrap_or_else(kobune_network::dns::default_resolv_conf);
    let cluster_dns = match args.cluster_dns {
        Some(ip) => ip,
        None => {
            kobune_network::dns::cluster_dns_ip(&args.service_cidr).context("--service-cidr")?
        }
    };
    let listen = SocketAddr::new(args.bind_address, args.https_listen_port);
    let listeners = server_listeners(&data_dir, !args.disable_agent).await?;
    let store = kobune_store::open(
        &args.datastore_endpoint,
        &data_dir.join("db").join("state.db"),
    )
    .await
    .with_context(|| format!("opening datastore {:?}", args.datastore_endpoint))?;
    let backend = store.backend();
    let mut sans = args.tls_san.clone();
    if !args.bind_address.is_unspecified() {
        sans.push(args.bind_address.to_string());
    }
    let cfg = kobune_apiserver::Config {
        data_dir: data_dir.clone(),
        listen,
        tls_sans: sans,
        token: args.token.clone(),
        service_cidr: args.service_cidr.clone(),
        datastore_endpoint: args.datastore_endpoint.clone(),
        watch_cache_size: args.watch_cache_size.max(1),
        audit,
        default_tolerations,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let server = Arc::new(kobune_apiserver::ApiServer::new(&cfg, store).await?);
    // Nodes whose agent runs in another process (`kobune agent`) are
    // reached at the kubelet endpoint their Node publishes.
    server
        .kubelets
        .connect_remote(server.registry.clone(), server.pki.token.clone());
    // On etcd, several servers may share the store: controllers and the
    // scheduler run only while this server holds the
    // kube-system/kobune-controllers Lease. The embedded store has one
    // server, which needs no election (and so no renewals while idle).
    let shared_store = args.datastore_endpoint.starts_with("http");
    let leader = {
        let reg = server.registry.clone();
        let storage = data_dir.join("storage");
        let kubelets = server.kubelets.clone();
        let scheduler = !args.disable_scheduler;
        let start: kobune_controllers::leader::StartFn = Arc::new(move || {
            let (reg, storage, kubelets) = (reg.clone(), storage.clone(), kubelets.clone());
            Box::pin(async move {
                kobune_controllers::start(reg.clone()).await?;
                kobune_controllers::start_local_path(reg.clone(), storage).await?;
                kobune_controllers::start_autoscaling(reg.clone(), kubelets).await?;
                if scheduler {
                    kobune_scheduler::start(reg).await?;
                }
                Ok(())
            })
        });
        if shared_store {
            let identity = args.node_name.clone().unwrap_or_else(hostname);
            let reg = server.registry.clone();
            Some(kobune_controllers::leader::start_leading(reg, &identity, start).await?)
        } else {
            start().await?;
            None
        }
    };
    let reg = server.registry.clone();
    kobune_agent::volumes::set_claim_resolver(Arc::new(move |ns: &str, claim: &str| {
        kobune_controllers::local_path::claim_path(&reg, ns, claim)
    }));
    let mut ingress = None;
    if !args.disable_ingress {
        let node_name =
            (!args.disable_agent).then(|| args.node_name.clone().unwrap_or_else(hostname));
        let fallback_ip = if args.bind_address.is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            args.bind_address.to_string()
        };
        let controller = kobune_network::ingress::start(
            server.registry.clone(),
            kobune_network::ingress::Config {
                http: SocketAddr::new(args.bind_address, args.ingress_http_port),
                https: SocketAddr::new(args.bind_address, args.ingress_https_port),
                node_name,
                fallback_ip,
            },
            &listeners,
        )
        .await
        .context("starting the Ingress controller")?;
        ingress = Some(controller);
    }
    if args.simulate_nodes > 0 {
        kobune_agent::start_simulated(server.registry.clone(), args.simulate_nodes, "sim").await?;
        println!(
            "registered {} simulated nodes (sim-0..sim-{})",
            args.simulate_nodes,
            args.simulate_nodes - 1
        );
    }
    let host = if args.bind_address.is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        args.bind_address.to_string()
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let kubeconfig = args
        .write_kubeconfig
        .unwrap_or_else(|| data_dir.join("kubeconfig.yaml"));
    if let Some(dir) = kubeconfig.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let contents = server
        .pki
        .admin_kubeconfig(&format!("https://{host}:{}", args.https_listen_port));
    let tmp = kubeconfig.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::rename(&tmp, &kubeconfig)?;
    let mut dns_server = None;
    let node = if args.disable_agent {
        None
    } else {
        let name = args.node_name.clone().unwrap_or_else(hostname);
        let pod_cidr = first_subnet(&args.cluster_cidr)?;
        let cfg = kobune_agent::NodeConfig {
            name: name.clone(),
            data_dir: data_dir.join("agent"),
            pod_cidr,
            cri_socket: None,
            dns: kobune_agent::dns::PodDnsSettings {
                cluster_dns: vec![cluster_dns.to_string()],
                cluster_domain: args.cluster_domain.clone(),
                resolv_conf: Some(resolv_conf.clone()),
            },
        };
        let dns_ip = kobune_network::dns::gateway_of(&cfg.pod_cidr)?;
        let dns_prefix: u8 = (cfg.pod_cidr.split('/').nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or(24);
        let node_ip = args.node_ip.to_string();
        let handle = kobune_agent::start_node(
            server.registry.clone(),
            server.kubelets.clone(),
            cfg,
            &node_ip,
        )
        .await
            .with_context(|| {
                format!("starting the node agent for node {name:?} (needs root, containerd, runc and the CNI plugins: run scripts/setup, or pass --disable-agent)")
            })?;
        println!(
            "node {name} ready (containerd under {})",
            data_dir.join("agent").display()
        );
        // Cluster DNS on the pod network's gateway, behind kube-system/kube-dns.
        let bridge = kobune_agent::node::BRIDGE;
        if let Err(e) = kobune_network::dns::ensure_bridge(bridge, dns_ip, dns_prefix) {
            tracing::warn!("preparing bridge {bridge}: {e:#}");
        }
        let dns = kobune_network::dns::start(
            server.registry.clone(),
            kobune_network::dns::DnsConfig {
                listen: SocketAddr::new(dns_ip.into(), 53),
                domain: args.cluster_domain.clone(),
                resolv_conf: resolv_conf.clone(),
            },
            &listeners,
        )
        .await
        .context("starting cluster DNS")?;
        dns_server = Some(dns);
        // Usually done at once; otherwise it keeps retrying in the background.
        let mut ensure = tokio::spawn(kobune_network::dns::ensure_kube_dns_retrying(
            server.registry.clone(),
            cluster_dns,
            name.clone(),
            dns_ip,
        ));
        if tokio::time::timeout(std::time::Duration::from_secs(10), &mut ensure)
            .await
            .is_err()
        {
            tracing::warn!("Service kube-system/kube-dns not created within 10s; still trying");
        }
        // Pods reach the API through the `kubernetes` Service: at the node's
        // address, or on one machine at the pod network's gateway.
        let advertise = match args.node_ip {
            std::net::IpAddr::V4(ip) if !ip.is_loopback() => Some(ip),
            _ => Some(dns_ip),
        }
        .filter(|_| !args.bind_address.is_loopback());
        if let Some(ip) = advertise {
            if let Err(e) = server.publish_endpoints(ip).await {
                tracing::warn!("publishing the kubernetes Service's endpoints: {e:#}");
            }
        }
        Some(handle)
    };
    // The service proxy (kube-proxy's role) runs where the node agent runs.
    let proxy = match &node {
        None => None,
        Some(_) => {
            let cfg = kobune_network::proxy::ProxyConfig {
                node_name: args.node_name.clone().unwrap_or_else(hostname),
                cluster_cidr: args.cluster_cidr.clone(),
                service_cidr: args.service_cidr.clone(),
                bridge: kobune_agent::node::BRIDGE.into(),
            };
            let source: Arc<dyn Source> = server.registry.cache.clone();
            let proxy =
                kobune_network::proxy::Proxy::start(source, Some(server.registry.clone()), cfg)
                    .await
                    .context("starting the service proxy (needs root and iptables)")?;
            Some(proxy)
        }
    };
    // NetworkPolicy enforcement for this node's pods; started after the
    // proxy, whose start flushes every KOBUNE- chain.
    let netpol = match &proxy {
        None => None,
        Some(_) => Some(
            kobune_network::netpol::NetworkPolicies::start(
                server.registry.cache.clone(),
                args.node_name.clone().unwrap_or_else(hostname),
            )
            .await
            .context("starting network policy enforcement (needs root and iptables)")?,
        ),
    };
    listeners.commit();
    println!(
        "kobune server ready in {} ms: https://{host}:{} ({backend} datastore in {})",
        started.elapsed().as_millis(),
        args.https_listen_port,
        data_dir.display()
    );
    println!("kubeconfig written to {}", kubeconfig.display());
    println!("  export KUBECONFIG={}", kubeconfig.display());
    let serve = tokio::spawn(server.serve(listener));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
        r = serve => { r??; }
    }
    // Ingress connections finish their request in flight; new ones (and
    // DNS queries) wait in the held sockets for the next server.
    let drained = ingress.map(|c| tokio::spawn(async move { c.drain(INGRESS_DRAIN).await }));
    if let Some(dns) = dns_server {
        dns.stop().await;
    }
    if let Some(leader) = leader {
        leader.shutdown().await;
    }
    // Pods, their network and the Service and policy rules stay, so an
    // upgrade or restart of the server does not interrupt them; the next
    // start takes them over.
    if let Some(netpol) = netpol {
        netpol.stop().await;
    }
    if let Some(proxy) = proxy {
        proxy.stop().await;
    }
    if let Some(drained) = drained {
        let _ = drained.await;
    }
    if let Some(node) = node {
        node.shutdown().await;
        println!(
            "server stopped; this node's pods keep running (the next start adopts them; `kobune killall --data-dir {}` stops them)",
            data_dir.display()
        );
    }
    Ok(())
}

/// The sockets the Ingress and DNS serve on. With a node agent the node's
/// data plane outlives the server (pods, Service rules, and these sockets,
/// held by a keeper process while no server runs). Without one, a keeper an
/// earlier run left is stopped. Fails if another server runs on `dir`.
async fn server_listeners(dir: &Path, keep: bool) -> Result<kobune_network::listeners::Listeners> {
    use kobune_network::listeners::{stop_keeper, Listeners};
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        if keep {
            return Ok(Listeners::kept(&dir, || spawn_keeper(&dir))?);
        }
        if let Err(e) = stop_keeper(&dir) {
            tracing::warn!("stopping the listener keeper of {}: {e}", dir.display());
        }
        Ok(Listeners::unkept())
    })
    .await?
}

/// How long a stopping server waits for Ingress requests in flight.
const INGRESS_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Starts `kobune listener-keeper` for `dir` in its own process group, so
/// that it outlives this server (and a Ctrl-C to it).
fn spawn_keeper(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("listener-keeper.log"))?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("listener-keeper")
        .arg("--data-dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()?;
    // Reaped should it exit while this server runs.
    std::thread::spawn(move || child.wait());
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "kobune".into())
}

/// The node's pod range: the first /24 of the cluster CIDR.
fn first_subnet(cluster_cidr: &str) -> Result<String> {
    let (ip, _) = kobune_apiserver::parse_cidr(cluster_cidr)?;
    let o = ip.octets();
    Ok(format!("{}.{}.{}.0/24", o[0], o[1], o[2]))
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KOBUNE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if let Command::ListenerKeeper { data_dir } = &cli.command {
        return Ok(kobune_network::listeners::keep(
            data_dir,
            kobune_network::listeners::HOLD,
        )?);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Server(args) => rt.block_on(server(args)),
        Command::Images(args) => rt.block_on(images(args)),
        Command::Agent(args) => rt.block_on(agent(args)),
        Command::Killall(args) => rt.block_on(killall(args)),
        Command::ListenerKeeper { .. } => unreachable!("run before the runtime starts"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
