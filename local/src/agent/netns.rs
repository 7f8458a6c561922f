//! The kernel boundary of the node agent: network namespaces, veth pairs, addresses,
//! routes and the one sysctl the wiring needs. Nothing else in the agent calls into the
//! kernel's network configuration.
//!
//! Namespaces are per thread: every function that enters a namespace says so and must run
//! on a dedicated `std::thread` (never a tokio worker). [`run_in`] spawns such a thread.
//! Netlink sockets are created from inside the namespace they configure; a socket keeps
//! the namespace it was created in even after its thread moves on.
//!
//! Pod wiring (Calico-like): the pod's `eth0` holds `<pod ip>/32` and a default route via
//! the gateway (169.254.1.1) marked on-link; the node side of the veth (`npc<8 hex>`) holds
//! `<gateway>/32`, has proxy ARP on, and the node namespace routes `<pod ip>/32` to it
//! with the node IP as preferred source.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// Where named network namespaces are pinned, as `ip netns` does.
pub const NETNS_DIR: &str = "/run/netns";

/// Errors of the kernel boundary; each names the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Opening a namespace file (it does not exist or is not readable).
    #[error("opening network namespace {path} failed")]
    Open {
        /// The namespace file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `setns` into a namespace failed.
    #[error("entering network namespace {path} failed")]
    Enter {
        /// The namespace file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// Creating a namespace (unshare, the pin file or its bind mount) failed.
    #[error("creating network namespace {path} failed ({step})")]
    Create {
        /// The namespace file.
        path: PathBuf,
        /// Which step failed.
        step: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Unmounting or removing a namespace pin failed.
    #[error("removing network namespace {path} failed")]
    Remove {
        /// The namespace file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A netlink request failed.
    #[error("{op} failed")]
    Netlink {
        /// What was being done, e.g. "adding address 10.244.0.3/32 to eth0".
        op: String,
        /// The cause.
        #[source]
        source: rtnetlink::Error,
    },
    /// A link that should exist was not found.
    #[error("link {name} not found in {netns}")]
    NoLink {
        /// The link name.
        name: String,
        /// The namespace it was looked up in.
        netns: String,
    },
    /// Writing a sysctl failed.
    #[error("setting sysctl {key} failed")]
    Sysctl {
        /// The sysctl path under /proc/sys.
        key: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Starting a thread or a runtime failed.
    #[error("{op} failed")]
    Runtime {
        /// What was being started.
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A namespace thread panicked.
    #[error("the thread working in network namespace {path} panicked")]
    Panicked {
        /// The namespace it worked in.
        path: PathBuf,
    },
}

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The path of the namespace pinned under [`NETNS_DIR`] with this name.
pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Whether a namespace is pinned at `path` (a bind mount of an nsfs inode).
pub fn exists(path: &Path) -> bool {
    // An nsfs file lives on a different device than the tmpfs directory holding it; an
    // empty leftover file (a failed pin) lives on the directory's device.
    let (Ok(file), Some(dir)) = (std::fs::metadata(path), path.parent()) else {
        return false;
    };
    let Ok(dir) = std::fs::metadata(dir) else {
        return false;
    };
    use std::os::unix::fs::MetadataExt;
    file.dev() != dir.dev()
}

/// Moves the **current thread** into the namespace at `path`. Only call this on a
/// dedicated thread.
pub fn enter(path: &Path) -> Result<()> {
    let file = File::open(path).map_err(|source| Error::Open {
        path: path.to_path_buf(),
        source,
    })?;
    enter_fd(&file, path)
}

fn enter_fd(file: &File, path: &Path) -> Result<()> {
    nix::sched::setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| Error::Enter {
        path: path.to_path_buf(),
        source,
    })
}

/// Creates a fresh namespace, moves the **current thread** into it and pins it at `path`
/// (like `ip netns add`). Only call this on a dedicated thread.
pub fn create_here(path: &Path) -> Result<()> {
    let fail = |step: &'static str| {
        let path = path.to_path_buf();
        move |source: std::io::Error| Error::Create { path, step, source }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail("creating the directory"))?;
    }
    nix::sched::unshare(CloneFlags::CLONE_NEWNET)
        .map_err(std::io::Error::from)
        .map_err(fail("unshare"))?;
    File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(fail("creating the pin file"))?;
    let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
    if let Err(e) = nix::mount::mount(
        Some(own.as_str()),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    ) {
        let _ = std::fs::remove_file(path);
        return Err(fail("bind mount")(e.into()));
    }
    Ok(())
}

/// Unpins the namespace at `path` (lazy unmount, then removes the file). The namespace
/// itself goes away once no thread or socket uses it. A missing pin is not an error.
pub fn remove(path: &Path) -> Result<()> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL | nix::Error::ENOENT) => {}
        Err(e) => {
            return Err(Error::Remove {
                path: path.to_path_buf(),
                source: e.into(),
            });
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Remove {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Runs `f` on a new thread inside the namespace at `path` and returns its result.
pub fn run_in<T, F>(path: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let owned = path.to_path_buf();
    let thread = std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            enter(&owned)?;
            f()
        })
        .map_err(|source| Error::Runtime {
            op: "starting a namespace thread",
            source,
        })?;
    thread.join().map_err(|_| Error::Panicked {
        path: path.to_path_buf(),
    })?
}

/// Everything needed to wire one pod's namespace to its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodWiring {
    /// The pod's namespace (`/run/netns/npc-<hash>`).
    pub pod_netns: PathBuf,
    /// The node's namespace, where the host side of the veth goes.
    pub node_netns: PathBuf,
    /// The host side link name (`npc<8 hex>`, at most 15 bytes).
    pub host_link: String,
    /// The pod's address (gets a /32 on `eth0`).
    pub pod_ip: Ipv4Addr,
    /// The pod's default gateway, also the address of every host-side veth.
    pub gateway: Ipv4Addr,
    /// The node's own address, made the preferred source of the node's route to the pod so
    /// traffic from the node (host-network pods) reaches pods from the node IP, not from
    /// the gateway address. Must be an address of the node namespace; `None`: no
    /// preference.
    pub node_ip: Option<Ipv4Addr>,
}

/// The pod-side interface name.
pub const POD_LINK: &str = "eth0";

fn single_thread_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Runtime {
            op: "building a netlink runtime",
            source,
        })
}

/// Opens a netlink connection in the current thread's namespace and drives it on the
/// current-thread runtime `rt`.
fn netlink_here(rt: &tokio::runtime::Runtime) -> Result<Handle> {
    // The socket registers with the runtime's reactor when created.
    let _entered = rt.enter();
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| Error::Runtime {
        op: "opening a netlink socket",
        source,
    })?;
    rt.spawn(conn);
    Ok(handle)
}

async fn link_index(handle: &Handle, name: &str, netns: &str) -> Result<u32> {
    let mut links = handle.link().get().match_name(name).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(msg.header.index),
        Ok(None) | Err(rtnetlink::Error::NetlinkError(_)) => Err(Error::NoLink {
            name: name.to_string(),
            netns: netns.to_string(),
        }),
        Err(source) => Err(Error::Netlink {
            op: format!("looking up link {name}"),
            source,
        }),
    }
}

fn nl(op: impl FnOnce() -> String) -> impl FnOnce(rtnetlink::Error) -> Error {
    move |source| Error::Netlink { op: op(), source }
}

/// Writes `value` to `/proc/sys/<key>` for the **current thread's** namespace.
fn sysctl(key: &str, value: &str) -> Result<()> {
    // /proc/sys/net resolves the namespace of the task that opens the file, so this
    // affects the namespace the calling thread is in.
    std::fs::write(Path::new("/proc/sys").join(key), value).map_err(|source| Error::Sysctl {
        key: key.to_string(),
        source,
    })
}

/// Creates the veth pair, addresses and routes for one pod. Runs on the **current
/// thread**, which must already be inside `w.pod_netns` (e.g. right after
/// [`create_here`]); it visits the node namespace and comes back.
pub fn wire_pod_here(w: &PodWiring) -> Result<()> {
    let pod_ns = File::open(&w.pod_netns).map_err(|source| Error::Open {
        path: w.pod_netns.clone(),
        source,
    })?;
    let node_ns = File::open(&w.node_netns).map_err(|source| Error::Open {
        path: w.node_netns.clone(),
        source,
    })?;
    let rt = single_thread_runtime()?;
    let pod = netlink_here(&rt)?;
    // The node-side socket is created from inside the node namespace; then come back.
    enter_fd(&node_ns, &w.node_netns)?;
    let node = netlink_here(&rt);
    // proxy_arp is set later, from inside the node namespace again.
    enter_fd(&pod_ns, &w.pod_netns)?;
    let node = node?;
    let pod_label = w.pod_netns.display().to_string();
    let node_label = w.node_netns.display().to_string();

    rt.block_on(async {
        // Pod side: veth created here, host end moved to the node namespace.
        pod.link()
            .add(LinkVeth::new(POD_LINK, &w.host_link).build())
            .execute()
            .await
            .map_err(nl(|| format!("creating veth {POD_LINK}/{}", w.host_link)))?;
        pod.link()
            .set(
                LinkUnspec::new_with_name(&w.host_link)
                    .setns_by_fd(node_ns.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(|| format!("moving {} to {node_label}", w.host_link)))?;
        let lo = link_index(&pod, "lo", &pod_label).await?;
        pod.link()
            .set(LinkUnspec::new_with_index(lo).up().build())
            .execute()
            .await
            .map_err(nl(|| "bringing lo up".to_string()))?;
        let eth0 = link_index(&pod, POD_LINK, &pod_label).await?;
        // IPv4 only: no link-local addresses, DAD or router solicitations from pods.
        // Best effort (the file is absent on kernels without IPv6).
        let _ = sysctl(&format!("net/ipv6/conf/{POD_LINK}/disable_ipv6"), "1");
        pod.address()
            .add(eth0, IpAddr::V4(w.pod_ip), 32)
            .execute()
            .await
            .map_err(nl(|| format!("adding {}/32 to {POD_LINK}", w.pod_ip)))?;
        pod.link()
            .set(LinkUnspec::new_with_index(eth0).up().build())
            .execute()
            .await
            .map_err(nl(|| format!("bringing {POD_LINK} up")))?;
        pod.route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(w.gateway)
                    .output_interface(eth0)
                    .onlink()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(|| format!("adding the default route via {}", w.gateway)))?;

        // Node side.
        let host = link_index(&node, &w.host_link, &node_label).await?;
        node.address()
            .add(host, IpAddr::V4(w.gateway), 32)
            .execute()
            .await
            .map_err(nl(|| format!("adding {}/32 to {}", w.gateway, w.host_link)))?;
        node.link()
            .set(LinkUnspec::new_with_index(host).up().build())
            .execute()
            .await
            .map_err(nl(|| format!("bringing {} up", w.host_link)))?;
        node.route()
            .add({
                let route = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(w.pod_ip, 32)
                    .output_interface(host)
                    .scope(RouteScope::Link);
                match w.node_ip {
                    Some(src) => route.pref_source(src).build(),
                    None => route.build(),
                }
            })
            .execute()
            .await
            .map_err(nl(|| {
                format!("adding the route {}/32 dev {}", w.pod_ip, w.host_link)
            }))?;
        Ok::<(), Error>(())
    })?;

    enter_fd(&node_ns, &w.node_netns)?;
    let proxy = sysctl(&format!("net/ipv4/conf/{}/proxy_arp", w.host_link), "1");
    let _ = sysctl(&format!("net/ipv6/conf/{}/disable_ipv6", w.host_link), "1");
    enter_fd(&pod_ns, &w.pod_netns)?;
    proxy
}

/// Deletes the host side of a pod's veth in the node namespace (which also removes the
/// pod side and the /32 route). A link that is already gone is not an error. Spawns its
/// own thread.
pub fn unwire_pod(node_netns: &Path, host_link: &str) -> Result<()> {
    let host_link = host_link.to_string();
    with_netlink_in(node_netns, |node, label| async move {
        let index = match link_index(&node, &host_link, &label).await {
            Ok(i) => i,
            Err(Error::NoLink { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        match node.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -(nix::libc::ENODEV) => {
                Ok(())
            }
            Err(source) => Err(Error::Netlink {
                op: format!("deleting link {host_link}"),
                source,
            }),
        }
    })
}

/// Whether the link `name` exists in the namespace at `netns`. Spawns its own thread.
pub fn link_exists(netns: &Path, name: &str) -> Result<bool> {
    let name = name.to_string();
    with_netlink_in(netns, |handle, label| async move {
        match link_index(&handle, &name, &label).await {
            Ok(_) => Ok(true),
            Err(Error::NoLink { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    })
}

/// Runs `op` on a thread of its own inside the namespace at `netns`, with a netlink handle
/// opened there and the namespace's path as text (for errors).
fn with_netlink_in<T, F, Fut>(netns: &Path, op: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Handle, String) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    let label = netns.display().to_string();
    run_in(netns, move || {
        let rt = single_thread_runtime()?;
        let handle = netlink_here(&rt)?;
        rt.block_on(op(handle, label))
    })
}
