//! The installer's conflist edits against the primary plugins' files in
//! tests/fixtures/conflists (reconstructed shapes; see the README there).

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use weft_cni::config::NetConf;
use weft_cni::conflist::{self, EntryOptions};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/conflists")
}

/// (dir, file name, parsed content) of every fixture.
fn all() -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for dir in ["calico", "flannel", "cilium", "kindnet", "k3s"] {
        let path = fixtures().join(dir);
        let entries = std::fs::read_dir(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let names: Vec<String> =
            entries.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect();
        let name = conflist::primary(names.iter().map(String::as_str))
            .unwrap_or_else(|| panic!("no network configuration in {}", path.display()))
            .to_string();
        let text = std::fs::read_to_string(path.join(&name)).expect("read the fixture");
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{dir}/{name}: {e}"));
        out.push((dir.to_string(), name, value));
    }
    out
}

fn entry(cpns: &str) -> Value {
    conflist::entry(&EntryOptions {
        kubeconfig: "/etc/cni/net.d/weft-cni-kubeconfig".into(),
        log_file: "/var/log/weft-cni.log".into(),
        log_level: "info".into(),
        control_plane_namespace: cpns.into(),
        exclude_namespaces: vec!["kube-system".into()],
    })
}

/// The primary plugins of `config`, as a runtime would run them.
fn plugins(config: &Value) -> Vec<Value> {
    match config.get("plugins") {
        Some(p) => p.as_array().expect("a list").clone(),
        None => {
            let mut single = config.clone();
            let obj = single.as_object_mut().expect("an object");
            obj.remove("cniVersion");
            obj.remove("name");
            vec![single]
        }
    }
}

#[test]
fn weft_goes_last_and_everything_else_stays() {
    for (dir, name, config) in all() {
        let out = conflist::insert(&config, &entry("weft")).unwrap_or_else(|e| panic!("{dir}: {e}"));
        let list = out["plugins"].as_array().expect("plugins");
        assert_eq!(list.last(), Some(&entry("weft")), "{dir}: weft is the last plugin");
        assert_eq!(list[..list.len() - 1], plugins(&config)[..], "{dir}: the primary plugins are unchanged");
        assert_eq!(out["cniVersion"], config["cniVersion"], "{dir}: cniVersion kept");
        assert_eq!(out["name"], config["name"], "{dir}: name kept");
        let keys = |v: &Value| v.as_object().expect("object").keys().cloned().collect::<Vec<_>>();
        if config.get("plugins").is_some() {
            assert_eq!(keys(&out), keys(&config), "{dir}: top-level keys kept");
            assert_eq!(conflist::list_name(&name, &config), name, "{dir}: same file");
        } else {
            assert_eq!(keys(&out), ["cniVersion", "name", "plugins"], "{dir}: a conflist now");
            assert_eq!(conflist::list_name(&name, &config), "05-cilium.conflist");
        }
        assert!(conflist::has_weft(&out) && !conflist::has_weft(&config));

        // The plugin reads its entry as the runtime passes it: the list's
        // version and name added, with a prevResult.
        let mut passed = entry("weft");
        passed["cniVersion"] = out["cniVersion"].clone();
        passed["name"] = out["name"].clone();
        passed["prevResult"] = json!({"cniVersion": out["cniVersion"], "interfaces": []});
        NetConf::parse(passed.to_string().as_bytes()).unwrap_or_else(|(_, e)| panic!("{dir}: {e}"));
    }
}

#[test]
fn inserting_twice_changes_nothing_and_a_stale_entry_is_replaced() {
    for (dir, _, config) in all() {
        let once = conflist::insert(&config, &entry("weft")).expect("insert");
        assert_eq!(conflist::insert(&once, &entry("weft")).expect("again"), once, "{dir}: idempotent");
        let other = conflist::insert(&once, &entry("mesh")).expect("replace");
        let weft: Vec<&Value> = other["plugins"]
            .as_array()
            .expect("plugins")
            .iter()
            .filter(|p| p["type"] == "weft-cni")
            .collect();
        assert_eq!(weft, [&entry("mesh")], "{dir}: one entry, the new one");
        assert_eq!(other["plugins"].as_array().map(Vec::len), once["plugins"].as_array().map(Vec::len));
    }
}

#[test]
fn a_stale_entry_in_the_middle_moves_to_the_end() {
    let (_, _, calico) = all().into_iter().next().expect("calico");
    let mut stale = calico.clone();
    stale["plugins"]
        .as_array_mut()
        .expect("plugins")
        .insert(1, json!({"type": "weft-cni", "logLevel": "debug"}));
    let out = conflist::insert(&stale, &entry("weft")).expect("insert");
    assert_eq!(out, conflist::insert(&calico, &entry("weft")).expect("insert"));
}

#[test]
fn removing_restores_the_primary_plugins() {
    for (dir, _, config) in all() {
        let inserted = conflist::insert(&config, &entry("weft")).expect("insert");
        let removed = conflist::remove(&inserted).unwrap_or_else(|| panic!("{dir}: weft found"));
        if config.get("plugins").is_some() {
            assert_eq!(removed, config, "{dir}: as before");
        } else {
            assert_eq!(plugins(&removed), plugins(&config), "{dir}: the same plugin, as a one-plugin list");
        }
        assert_eq!(conflist::remove(&removed), None, "{dir}: nothing more to remove");
        assert_eq!(conflist::remove(&config), None);
    }
}
