//! STYLE.md 10: the workspace's dependency arrows point down only (DESIGN.md "Workspace").
//! Reads `cargo metadata` and fails on any edge not in the allowed map.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Each workspace crate and the workspace crates it may depend on.
fn allowed() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    let spec_only = ["hull-spec"];
    BTreeMap::from([
        ("hull-spec", BTreeSet::new()),
        // Host-system helpers below every subsystem: it depends on no crate of ours.
        ("hull-sys", BTreeSet::new()),
        // The serde-only contract between vmmd, zoned and vmm: it shares hull-spec's value
        // types (MacAddr) and depends on no other crate of ours.
        ("hull-vmm-proto", BTreeSet::from(spec_only)),
        // The metadata protocol's codec: no I/O, no crate of ours (the mdata tools and
        // vmmd's agent both use it).
        ("hull-mdata", BTreeSet::new()),
        // The guest's mdata tools: the codec and nothing else (they run inside zones).
        ("hull-mdata-tools", BTreeSet::from(["hull-mdata"])),
        // The boot-disk reader: a parser of a guest's untrusted disk, no crate of ours.
        ("hull-bootdisk", BTreeSet::new()),
        // The VMM runs the boot-disk reader (`--find-boot`) in its own confined process.
        (
            "hull-vmm",
            BTreeSet::from(["hull-bootdisk", "hull-sys", "hull-vmm-proto"]),
        ),
        ("hull-cowstore", BTreeSet::from(["hull-sys"])),
        ("hull-zoned", BTreeSet::from(["hull-sys", "hull-vmm-proto"])),
        ("hull-vswitch", BTreeSet::from(["hull-sys"])),
        ("hull-client", BTreeSet::from(spec_only)),
        ("hull-cli", BTreeSet::from(["hull-client", "hull-spec"])),
        // The containerd shim is a client of vmmd, as the CLIs are.
        (
            "hull-shim",
            BTreeSet::from(["hull-client", "hull-spec", "hull-sys"]),
        ),
        // The web console is a client of vmmd too, with no power of its own.
        ("hull-web", BTreeSet::from(["hull-client", "hull-spec"])),
        // vmmd links the subsystem libraries as they land (zoned, cowstore, vswitch), never
        // hull-vmm: it runs the vmm binary as a process and speaks hull-vmm-proto to it.
        (
            "vmmd",
            BTreeSet::from([
                "hull-mdata",
                "hull-spec",
                "hull-sys",
                "hull-vmm-proto",
                "hull-zoned",
                "hull-cowstore",
                "hull-vswitch",
            ]),
        ),
        (
            "hull-tests",
            BTreeSet::from([
                "hull-client",
                "hull-mdata",
                "hull-spec",
                "hull-sys",
                "hull-cowstore",
                "hull-vswitch",
            ]),
        ),
    ])
}

#[test]
fn dependency_arrows_point_down() {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let packages = meta["packages"].as_array().expect("packages");
    let members: BTreeSet<String> = packages
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect();
    let allowed = allowed();
    for p in packages {
        let name = p["name"].as_str().expect("name");
        let ok = allowed
            .get(name)
            .unwrap_or_else(|| panic!("new workspace crate {name}: add it to the layering map"));
        for dep in p["dependencies"].as_array().expect("deps") {
            let dep_name = dep["name"].as_str().expect("dep name");
            if dep["kind"].as_str() == Some("dev") {
                continue;
            }
            if members.contains(dep_name) {
                assert!(
                    ok.contains(dep_name),
                    "{name} must not depend on {dep_name}"
                );
            }
        }
    }
    // The wire crate depends on nothing of ours and does no I/O-capable runtime work; sha2
    // (pure hashing) derives docker layer images' uuids and checks OCI digests, which both
    // imgadm and vmmd must do alike (hull_spec::docker).
    let spec = packages
        .iter()
        .find(|p| p["name"] == "hull-spec")
        .expect("spec");
    for dep in spec["dependencies"].as_array().expect("deps") {
        let d = dep["name"].as_str().expect("name");
        assert!(
            ["serde", "serde_json", "schemars", "sha2", "uuid"].contains(&d),
            "hull-spec depends on {d}"
        );
    }
    // Nor does the VMM's protocol crate: serde and hull-spec's value types, nothing else.
    let proto = packages
        .iter()
        .find(|p| p["name"] == "hull-vmm-proto")
        .expect("vmm-proto");
    for dep in proto["dependencies"].as_array().expect("deps") {
        let d = dep["name"].as_str().expect("name");
        assert!(
            ["serde", "serde_json", "hull-spec"].contains(&d),
            "hull-vmm-proto depends on {d}"
        );
    }
}
