//! Interface configuration through rtnetlink: loopback up, then tap0's MAC, MTU,
//! address, link state and default route, all from the host-supplied network config.

use super::NetError;
use futures_util::TryStreamExt;
use netlink_packet_route::link::LinkMessage;
use protocol::config::NetworkConfig;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};

fn nl<'a>(op: &'static str, link: &'a str) -> impl FnOnce(rtnetlink::Error) -> NetError + 'a {
    move |e| NetError::Netlink {
        op,
        link: link.to_string(),
        detail: e.to_string(),
    }
}

async fn link_index(handle: &Handle, name: &str) -> Result<u32, NetError> {
    let msg: Option<LinkMessage> = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
        .map_err(nl("find link", name))?;
    msg.map(|m| m.header.index)
        .ok_or_else(|| NetError::Netlink {
            op: "find link",
            link: name.to_string(),
            detail: "no such interface".into(),
        })
}

/// True for "already exists" answers, which make re-configuration idempotent.
fn exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::EEXIST)
}

async fn configure_async(tap: &str, cfg: &NetworkConfig) -> Result<(), NetError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| NetError::Netlink {
        op: "open netlink socket",
        link: tap.into(),
        detail: e.to_string(),
    })?;
    tokio::spawn(connection);

    let lo = link_index(&handle, "lo").await?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(lo).up().build())
        .execute()
        .await
        .map_err(nl("set up", "lo"))?;

    let index = link_index(&handle, tap).await?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .address(cfg.mac.0.to_vec())
                .mtu(u32::from(cfg.mtu))
                .build(),
        )
        .execute()
        .await
        .map_err(nl("set MAC and MTU", tap))?;
    if let Err(e) = handle
        .address()
        .add(index, IpAddr::V4(cfg.address), cfg.prefix_len)
        .execute()
        .await
    {
        if !exists(&e) {
            return Err(nl("add address", tap)(e));
        }
    }
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl("set up", tap))?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(cfg.gateway)
        .output_interface(index)
        .build();
    if let Err(e) = handle.route().add(route).execute().await {
        if !exists(&e) {
            return Err(nl("add default route", tap)(e));
        }
    }
    Ok(())
}

/// Applies `cfg` to the interface `tap` (and brings `lo` up).
pub fn configure(tap: &str, cfg: &NetworkConfig) -> Result<(), NetError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| NetError::Netlink {
            op: "start runtime",
            link: tap.into(),
            detail: e.to_string(),
        })?;
    rt.block_on(configure_async(tap, cfg))
}
