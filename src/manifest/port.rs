//! Published ports: `"[ip:]host:container[/tcp|udp]"`.

use std::net::{IpAddr, Ipv6Addr};

use super::{PortMapping, Protocol};

/// The accepted forms, appended to every port error.
pub(super) const PORT_FORMAT: &str = "\"[ip:]host:container[/tcp|udp]\"";

/// Parses `"8080:80"`, `"127.0.0.1:8080:80/udp"` or `"[::1]:8080:80"`. The error says what is
/// wrong with which part, without repeating the whole value.
pub(super) fn parse_port(s: &str) -> Result<PortMapping, String> {
    let (addr, protocol) = match s.rsplit_once('/') {
        Some((addr, "tcp")) => (addr, Protocol::Tcp),
        Some((addr, "udp")) => (addr, Protocol::Udp),
        Some((_, other)) => return Err(format!("protocol \"{other}\" is not tcp or udp")),
        None => (s, Protocol::Tcp),
    };
    let (host_ip, ports) = split_host_ip(addr)?;
    let parts: Vec<&str> = ports.split(':').collect();
    let (host, container) = match parts.as_slice() {
        [host, container] => (*host, *container),
        [_] => return Err("the host port is missing".into()),
        [.., _, _] if host_ip.is_none() && looks_like_bare_ipv6(&parts) => {
            return Err("an IPv6 host address must be in brackets, e.g. \"[::1]:8080:80\"".into());
        }
        _ => return Err("too many \":\"-separated parts".into()),
    };
    Ok(PortMapping {
        host_port: port_number("host", host)?,
        container_port: port_number("container", container)?,
        host_ip,
        protocol,
    })
}

/// Splits off the optional host address: `"[::1]:rest"`, `"1.2.3.4:h:c"` or just `"h:c"`.
fn split_host_ip(addr: &str) -> Result<(Option<String>, &str), String> {
    if let Some(bracketed) = addr.strip_prefix('[') {
        let Some((ip, rest)) = bracketed.split_once("]:") else {
            return Err("unclosed \"[\" around the host address".into());
        };
        return Ok((Some(host_ip(ip)?), rest));
    }
    match addr.split(':').count() {
        3 => {
            let (ip, rest) = addr.split_once(':').unwrap_or((addr, ""));
            Ok((Some(host_ip(ip)?), rest))
        }
        _ => Ok((None, addr)),
    }
}

/// `"::1:8080:80"`: everything before the last two parts reads as an IPv6 address.
fn looks_like_bare_ipv6(parts: &[&str]) -> bool {
    parts.len() > 3
        && parts[..parts.len() - 2]
            .join(":")
            .parse::<Ipv6Addr>()
            .is_ok()
}

fn host_ip(ip: &str) -> Result<String, String> {
    ip.parse::<IpAddr>()
        .map(|_| ip.to_string())
        .map_err(|_| format!("host address \"{ip}\" is not an IP address"))
}

fn port_number(which: &str, text: &str) -> Result<u16, String> {
    if text.is_empty() {
        return Err(format!("the {which} port is empty"));
    }
    if text.contains('-') {
        return Err(format!(
            "{which} port \"{text}\": port ranges are not supported"
        ));
    }
    if !text.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("{which} port \"{text}\" is not a number"));
    }
    match text.parse::<u32>() {
        Ok(n @ 1..=65535) => Ok(n as u16),
        _ => Err(format!("{which} port {text} is out of range (1-65535)")),
    }
}

/// Whether two published ports would fight over the same host socket: same port and
/// protocol, and the same address or either one bound to all addresses.
pub(super) fn ports_clash(a: &PortMapping, b: &PortMapping) -> bool {
    fn address(m: &PortMapping) -> Option<IpAddr> {
        m.host_ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .filter(|ip| !ip.is_unspecified())
    }
    if a.host_port != b.host_port || a.protocol != b.protocol {
        return false;
    }
    match (address(a), address(b)) {
        (Some(x), Some(y)) => x == y,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(ip: Option<&str>, host: u16, container: u16, protocol: Protocol) -> PortMapping {
        PortMapping {
            host_ip: ip.map(str::to_string),
            host_port: host,
            container_port: container,
            protocol,
        }
    }

    #[test]
    fn host_and_container_port_default_to_tcp() {
        assert_eq!(
            parse_port("8080:80"),
            Ok(mapping(None, 8080, 80, Protocol::Tcp))
        );
    }

    #[test]
    fn host_ip_and_protocol_are_read() {
        assert_eq!(
            parse_port("127.0.0.1:53:5353/udp"),
            Ok(mapping(Some("127.0.0.1"), 53, 5353, Protocol::Udp))
        );
        assert_eq!(
            parse_port("[::1]:8080:80/tcp"),
            Ok(mapping(Some("::1"), 8080, 80, Protocol::Tcp))
        );
    }

    #[test]
    fn bad_ports_say_which_part_is_wrong() {
        let cases = [
            ("80:abc", "container port \"abc\" is not a number"),
            ("abc:80", "host port \"abc\" is not a number"),
            ("80", "host port is missing"),
            ("0:80", "host port 0 is out of range"),
            ("80:65536", "container port 65536 is out of range"),
            ("80:80/sctp", "protocol \"sctp\""),
            ("8000-8010:80", "port ranges are not supported"),
            ("localhost:80:80", "\"localhost\" is not an IP address"),
            ("::1:80:80", "in brackets"),
            ("[::1:80:80", "unclosed"),
            (":80", "host port is empty"),
            ("1.2.3.4:5:6:7", "too many"),
        ];
        for (input, expected) in cases {
            let err = parse_port(input).unwrap_err();
            assert!(
                err.contains(expected),
                "{input:?}: {err:?} lacks {expected:?}"
            );
        }
    }

    #[test]
    fn same_port_clashes_when_addresses_overlap() {
        let any = mapping(None, 80, 1, Protocol::Tcp);
        let all = mapping(Some("0.0.0.0"), 80, 2, Protocol::Tcp);
        let local = mapping(Some("127.0.0.1"), 80, 3, Protocol::Tcp);
        let other = mapping(Some("127.0.0.2"), 80, 4, Protocol::Tcp);
        assert!(ports_clash(&any, &local));
        assert!(ports_clash(&all, &local));
        assert!(ports_clash(&local, &local.clone()));
        assert!(!ports_clash(&local, &other));
    }

    #[test]
    fn different_protocol_or_port_does_not_clash() {
        let tcp = mapping(None, 53, 53, Protocol::Tcp);
        let udp = mapping(None, 53, 53, Protocol::Udp);
        let other = mapping(None, 54, 53, Protocol::Tcp);
        assert!(!ports_clash(&tcp, &udp));
        assert!(!ports_clash(&tcp, &other));
    }
}
