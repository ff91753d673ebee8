//! `ferry server --ports`: the range replica and proxy-admin ports come from.

use ferry_runtime::{PortRange, free_port_in};

#[test]
fn a_port_range_parses_or_says_what_is_wrong() {
    assert_eq!(
        "20000-29999".parse::<PortRange>(),
        Ok(PortRange {
            first: 20000,
            last: 29999
        })
    );
    assert_eq!(
        " 7000 - 7000 ".parse::<PortRange>(),
        Ok(PortRange {
            first: 7000,
            last: 7000
        })
    );
    for (bad, why) in [
        ("20000", "expected FIRST-LAST"),
        ("20000-", "port number"),
        ("a-b", "port number"),
        ("1-70000", "port number"),
        ("0-10", "port 0"),
        ("300-200", "above the last"),
    ] {
        let err = bad.parse::<PortRange>().expect_err(bad).to_string();
        assert!(
            err.contains(why) && err.contains(bad.trim()),
            "{bad}: {err}"
        );
    }
}

#[test]
fn ports_come_from_the_range_until_it_is_exhausted() {
    // A range of three ports found free now; hold each one given out.
    let base = (20_000..60_000u16)
        .step_by(7)
        .find(|p| (0..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()))
        .expect("three free ports in a row");
    let range = PortRange {
        first: base,
        last: base + 2,
    };
    let mut held = Vec::new();
    for _ in 0..3 {
        let port = free_port_in(Some(range)).expect("a free port in the range");
        assert!(
            (range.first..=range.last).contains(&port),
            "{port} is outside {range}"
        );
        held.push(std::net::TcpListener::bind(("127.0.0.1", port)).expect("hold it"));
    }
    let ports: std::collections::BTreeSet<u16> = held
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    assert_eq!(ports.len(), 3, "three different ports: {ports:?}");
    let err = free_port_in(Some(range))
        .expect_err("all three are taken")
        .to_string();
    assert!(
        err.contains(&range.to_string()) && err.contains("no free port"),
        "{err}"
    );
    // Without a range: the kernel's choice.
    assert!(free_port_in(None).is_ok());
}
