//! `operator healthcheck`: asks a running controller's `/healthz`, for a container
//! `HEALTHCHECK` that needs no curl in the image. Exit 0 when it answers healthy, 1 otherwise,
//! with one line saying why.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::ExitCode;

use super::{Failure, HealthcheckArgs, outln};

pub async fn run(args: HealthcheckArgs) -> Result<ExitCode, Failure> {
    // A controller listening on every address answers on loopback too.
    let mut addr = args.listen;
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        IpAddr::V6(ip) if ip.is_unspecified() => addr.set_ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        _ => {}
    }
    let url = format!("http://{addr}/healthz");
    let client = reqwest::Client::builder()
        .timeout(args.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let response = client.get(&url).send().await.map_err(|e| {
        Failure::new(format!(
            "no controller answers at {url}: {}",
            crate::agent::api::error_chain(&e)
        ))
    })?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let said = body.lines().next().unwrap_or("").trim();
    if status.is_success() {
        outln!("healthy: {said}");
        return Ok(ExitCode::SUCCESS);
    }
    Err(Failure::new(format!(
        "the controller at {url} is not healthy ({status}): {said}"
    )))
}
