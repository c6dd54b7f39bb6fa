//! `kobune`: the command line. `kobune server` runs a whole cluster's
//! control plane on this machine.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

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
enum Command {
    /// Run the control plane: API server and datastore.
    Server(ServerArgs),
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
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    kobune_apiserver::parse_cidr(&args.cluster_cidr).context("--cluster-cidr")?;
    let listen = SocketAddr::new(args.bind_address, args.https_listen_port);
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
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let server = Arc::new(kobune_apiserver::ApiServer::new(&cfg, store).await?);
    kobune_controllers::start(server.registry.clone()).await?;
    kobune_scheduler::start(server.registry.clone()).await?;
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
        };
        let handle = kobune_agent::start_node(server.registry.clone(), server.kubelets.clone(), cfg)
            .await
            .with_context(|| {
                format!("starting the node agent for node {name:?} (needs root, containerd, runc and the CNI plugins: run scripts/setup, or pass --disable-agent)")
            })?;
        println!(
            "node {name} ready (containerd under {})",
            data_dir.join("agent").display()
        );
        Some(handle)
    };
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
    if let Some(node) = node {
        // Stop this node's pods so nothing is left running after the server.
        if tokio::time::timeout(std::time::Duration::from_secs(30), node.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("node agent did not stop its pods within 30s");
        }
    }
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Server(args) => rt.block_on(server(args)),
    }
}
