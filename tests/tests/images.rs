//! The container images `scripts/build-images` writes (images/README.md),
//! checked with real OCI tools from Debian: `skopeo` reads each archive's
//! config and copies it into an OCI layout, `umoci` unpacks it, and each
//! entrypoint runs from the unpacked rootfs (`chroot`, `setpriv` to the
//! image's UID). What the images must match comes from the chart
//! (charts/weft/values.yaml) and the injector (injector-webhook/src), read
//! here, so neither can drift from the images unnoticed.
//!
//! The archives are built before the tests, never by them (`.ci/run` runs
//! `scripts/build-images --profile dev` first); they are looked for in
//! `<target dir>/images` or `$WEFT_IMAGES_DIR`. Without them, the tools or
//! root, a test prints why it skips and passes, except under `CI=true`,
//! where it fails.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use serde_json::Value;
use weft_e2e::{bins::profile_dir, temp::TempDir};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const REGISTRY: &str = "ghcr.io/weft-mesh";
const SOURCE: &str = "https://github.com/weft-mesh/weft";
const BIN_DIR: &str = "/usr/local/bin";
const IMAGES: [&str; 6] =
    ["weft-identity", "weft-destination", "weft-injector", "weft-proxy", "weft-proxy-init", "weft-cni"];
/// What weft-proxy-init runs (proxy-init/src/backend.rs).
const IPTABLES_LINKS: [&str; 8] = [
    "iptables-nft-restore",
    "iptables-nft-save",
    "ip6tables-nft-restore",
    "ip6tables-nft-save",
    "iptables-legacy-restore",
    "iptables-legacy-save",
    "ip6tables-legacy-restore",
    "ip6tables-legacy-save",
];
/// (tool, Debian package)
const TOOLS: [(&str, &str); 6] = [
    ("skopeo", "skopeo"),
    ("umoci", "umoci"),
    ("setpriv", "util-linux"),
    ("unshare", "util-linux"),
    ("chroot", "coreutils"),
    ("tar", "tar"),
];

extern "C" {
    fn geteuid() -> u32;
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

fn read_source(rel: &str) -> String {
    let path = workspace().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn archive(name: &str) -> PathBuf {
    let dir = std::env::var_os("WEFT_IMAGES_DIR").map(PathBuf::from).unwrap_or_else(|| {
        profile_dir().parent().expect("the profile directory is inside the target directory").join("images")
    });
    dir.join(format!("{name}-{VERSION}.tar"))
}

/// Why the archive of `name` cannot be checked here, if it cannot.
fn unavailable(name: &str) -> Option<String> {
    let path = archive(name);
    if !path.is_file() {
        return Some(format!(
            "{} is missing: run scripts/build-images (--profile dev is enough) before the tests",
            path.display()
        ));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for (tool, package) in TOOLS {
        if !std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()) {
            return Some(format!("{tool} is not installed (apt-get install {package})"));
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { geteuid() } != 0 {
        return Some("unpacking an image and chroot need root".into());
    }
    None
}

/// Prints why and returns true when the image cannot be checked here;
/// under `CI=true` that is a failure instead.
fn skip(name: &str) -> bool {
    let Some(reason) = unavailable(name) else { return false };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true, so the images must be checked: {reason}");
    }
    println!("skipping: {reason}");
    true
}

fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: &Output, what: &str) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what} is not JSON: {e}"))
}

// === what the chart and the injector expect ===

/// The first integer after `key` in `text`, after `from`.
fn number_after(text: &str, from: &str, key: &str, file: &str) -> u32 {
    let start = text.find(from).unwrap_or_else(|| panic!("{file}: no {from:?}"));
    let rest = &text[start..];
    let at = rest.find(key).unwrap_or_else(|| panic!("{file}: no {key:?} after {from:?}"));
    let digits: String =
        rest[at + key.len()..].trim_start().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or_else(|_| panic!("{file}: {key:?} after {from:?} is not a number"))
}

/// `uid:gid` each image must run as.
fn expected_user(name: &str) -> String {
    match name {
        // The chart's podSecurityContext, shared by every control-plane pod.
        "weft-identity" | "weft-destination" | "weft-injector" => {
            let values = read_source("charts/weft/values.yaml");
            let file = "charts/weft/values.yaml";
            let uid = number_after(&values, "\npodSecurityContext:", "runAsUser:", file);
            let gid = number_after(&values, "\npodSecurityContext:", "runAsGroup:", file);
            format!("{uid}:{gid}")
        }
        // The injector runs the proxy as PROXY_UID, group PROXY_UID; the
        // image says the same for runtimes that run it without them.
        "weft-proxy" => {
            let inject = read_source("injector-webhook/src/inject.rs");
            assert!(
                inject.contains("\"securityContext\": restricted_security_context(PROXY_UID),")
                    && inject.contains("\"runAsUser\": uid,")
                    && inject.contains("\"runAsGroup\": uid,"),
                "injector-webhook/src/inject.rs no longer runs the proxy as PROXY_UID:PROXY_UID"
            );
            let config = read_source("injector-webhook/src/config.rs");
            let uid = number_after(&config, "pub const PROXY_UID", "=", "injector-webhook/src/config.rs");
            format!("{uid}:{uid}")
        }
        "weft-proxy-init" => {
            let inject = read_source("injector-webhook/src/inject.rs");
            let uid = number_after(
                &inject,
                "fn init_container",
                "\"runAsUser\":",
                "injector-webhook/src/inject.rs",
            );
            format!("{uid}:{uid}")
        }
        // The chart's weft-cni DaemonSet: root, to write the node's CNI dirs.
        "weft-cni" => {
            let file = "charts/weft/templates/cni.yaml";
            let daemonset = read_source(file);
            let uid = number_after(&daemonset, "name: install-cni", "runAsUser:", file);
            let gid = number_after(&daemonset, "name: install-cni", "runAsGroup:", file);
            format!("{uid}:{gid}")
        }
        other => panic!("unknown image {other}"),
    }
}

// === the archives ===

fn check_image(name: &str) {
    if skip(name) {
        return;
    }
    let path = archive(name);
    let archive_ref = format!("oci-archive:{}", path.display());
    let reference = format!("{REGISTRY}/{name}:{VERSION}");
    let user = expected_user(name);

    // The index and docker manifest name the image, as `podman load`,
    // `ctr images import` and `kind load image-archive` read it.
    let path_str = path.to_str().expect("UTF-8 path");
    let index: Value = json(&run("tar", &["-xOf", path_str, "index.json"]), "index.json");
    let manifests = index["manifests"].as_array().expect("index.json has manifests");
    assert_eq!(manifests.len(), 1, "one image per archive: {index}");
    for key in ["org.opencontainers.image.ref.name", "io.containerd.image.name"] {
        assert_eq!(manifests[0]["annotations"][key], reference.as_str(), "index.json {key}");
    }
    let docker: Value = json(&run("tar", &["-xOf", path_str, "manifest.json"]), "manifest.json");
    assert_eq!(docker[0]["RepoTags"], serde_json::json!([reference]), "manifest.json RepoTags");

    // The config, as skopeo reads it.
    let config = json(&run("skopeo", &["inspect", "--config", &archive_ref]), "skopeo inspect --config");
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");
    let c = &config["config"];
    assert_eq!(c["User"], user.as_str(), "User of {name} (chart / injector)");
    let entrypoint = format!("{BIN_DIR}/{name}");
    assert_eq!(c["Entrypoint"], serde_json::json!([entrypoint]), "Entrypoint of {name}");
    assert!(c["Cmd"].is_null(), "the chart and the injector give args only: no Cmd ({})", c["Cmd"]);
    let env: Vec<&str> = c["Env"].as_array().expect("Env").iter().filter_map(Value::as_str).collect();
    let path_var = env.iter().find_map(|e| e.strip_prefix("PATH=")).expect("PATH in Env");
    let labels = &c["Labels"];
    for (key, want) in [("title", name), ("version", VERSION), ("source", SOURCE), ("licenses", "Apache-2.0")]
    {
        assert_eq!(labels[format!("org.opencontainers.image.{key}")], want, "label {key} of {name}");
    }
    let revision = labels["org.opencontainers.image.revision"].as_str().expect("revision label");
    let commit = revision.strip_suffix("-dirty").unwrap_or(revision);
    assert!(
        commit == "unknown" || (commit.len() == 40 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "revision label {revision:?} is not a git commit"
    );

    // Copied into an OCI layout by skopeo (every digest verified), unpacked
    // by umoci.
    let dir = TempDir::new(&format!("image-{name}"));
    let layout = dir.join("layout");
    let bundle = dir.join("bundle");
    let layout_ref = format!("oci:{}:weft", layout.display());
    run("skopeo", &["--insecure-policy", "copy", "--quiet", &archive_ref, &layout_ref]);
    let image = format!("{}:weft", layout.display());
    run("umoci", &["unpack", "--image", &image, bundle.to_str().expect("UTF-8 path")]);
    let runtime: Value = serde_json::from_slice(
        &fs::read(bundle.join("config.json")).unwrap_or_else(|e| panic!("umoci's config.json: {e}")),
    )
    .expect("umoci's config.json is JSON");
    let (uid, gid) = user.split_once(':').expect("uid:gid");
    assert_eq!(runtime["process"]["user"]["uid"].to_string(), uid, "umoci: uid");
    assert_eq!(runtime["process"]["user"]["gid"].to_string(), gid, "umoci: gid");
    assert_eq!(runtime["process"]["args"], serde_json::json!([entrypoint]), "umoci: args");
    let rootfs = bundle.join("rootfs");
    // The image's user must reach the rootfs: umoci makes the bundle 0700.
    for d in [dir.path(), bundle.as_path()] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", d.display()));
    }

    // No shell, nothing but what the image is for.
    let files = walk(&rootfs);
    for shell in ["bin/sh", "usr/bin/sh", "bin/bash", "bin/busybox"] {
        assert!(rootfs.join(shell).symlink_metadata().is_err(), "{name} has /{shell}");
    }
    for f in &files {
        let base = f.rsplit('/').next().unwrap_or(f);
        assert!(!["sh", "bash", "dash", "ash", "zsh", "busybox"].contains(&base), "{name} has a shell: /{f}");
    }
    let binary = rootfs.join(entrypoint.trim_start_matches('/'));
    assert!(is_static_elf(&binary), "{entrypoint} in {name} is not a static executable");
    if name == "weft-proxy-init" {
        for link in IPTABLES_LINKS {
            let found =
                path_var.split(':').any(|d| rootfs.join(d.trim_start_matches('/')).join(link).is_file());
            assert!(found, "weft-proxy-init runs {link}: not on the image's PATH {path_var}");
        }
    } else {
        let want = vec![entrypoint.trim_start_matches('/').to_string()];
        assert_eq!(files, want, "{name} holds only its binary");
    }
    if name == "weft-proxy" {
        // The injector's postStart hook (non-native sidecars) runs its
        // await command by name: it must be found on the image's PATH.
        let config = read_source("injector-webhook/src/config.rs");
        let hook = config
            .split("await_command: vec![\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("injector-webhook/src/config.rs: await_command");
        let found = if hook.starts_with('/') {
            rootfs.join(hook.trim_start_matches('/')).is_file()
        } else {
            path_var.split(':').any(|d| rootfs.join(d.trim_start_matches('/')).join(hook).is_file())
        };
        assert!(
            found,
            "the injector's postStart hook runs {hook:?}: not in the proxy image (PATH {path_var})"
        );
    }

    // The entrypoint runs from the rootfs, as the image's user, with the
    // image's environment only. setpriv keeps just CAP_SYS_CHROOT (ambient)
    // so that chroot(8) can enter the rootfs after the UID change; file
    // access is checked as that UID.
    let rootfs_str = rootfs.to_str().expect("UTF-8 path");
    let mut cmd = if uid == "0" {
        let mut c = Command::new("chroot");
        c.args([rootfs_str, &entrypoint, "--version"]);
        c
    } else {
        let mut c = Command::new("setpriv");
        c.args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "--inh-caps=-all,+sys_chroot",
            "--ambient-caps=+sys_chroot",
            "chroot",
            rootfs_str,
            &entrypoint,
            "--version",
        ]);
        c
    };
    cmd.env_clear().current_dir("/").stdin(Stdio::null());
    for e in &env {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("run {entrypoint} in {name}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{entrypoint} --version in {name} as {user}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("{name} {VERSION}")), "{name} --version printed {stdout:?}");
    println!("{name}: {reference}, user {user}, {stdout}");

    if name == "weft-proxy-init" {
        proxy_init_programs_iptables(&rootfs);
    }
}

/// proxy-init's real job with the image's own iptables (so with exactly its
/// shared objects and extensions): program a fresh network namespace with
/// each backend, /proc mounted as a container runtime would.
fn proxy_init_programs_iptables(rootfs: &Path) {
    let proc_dir = rootfs.join("proc");
    fs::create_dir_all(&proc_dir).unwrap_or_else(|e| panic!("create {}: {e}", proc_dir.display()));
    // A runtime provides /dev; proxy-init's iptables runs with stdin from
    // /dev/null.
    let dev = rootfs.join("dev");
    fs::create_dir_all(&dev).unwrap_or_else(|e| panic!("create {}: {e}", dev.display()));
    run("mknod", &["-m", "666", dev.join("null").to_str().expect("UTF-8 path"), "c", "1", "3"]);
    let mount_proc = format!("--mount-proc={}", proc_dir.display());
    let rootfs = rootfs.to_str().expect("UTF-8 path");
    let ipv6 = Path::new("/proc/net/if_inet6").exists();
    for mode in ["nft", "legacy"] {
        let out = run(
            "unshare",
            &[
                "--net",
                "--pid",
                "--fork",
                &mount_proc,
                "chroot",
                rootfs,
                "/usr/local/bin/weft-proxy-init",
                "--iptables-mode",
                mode,
                "--skip-inbound-ports",
                "4190,4191",
            ],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut applied = vec![format!("# IPv4 (iptables-{mode}-restore applied)")];
        if ipv6 {
            applied.push(format!("# IPv6 (ip6tables-{mode}-restore applied)"));
        }
        for line in applied {
            assert!(
                stdout.contains(&line),
                "weft-proxy-init --iptables-mode {mode}: no {line:?} in\n{stdout}"
            );
        }
        assert!(stdout.contains("-j REDIRECT --to-ports 4140"), "{stdout}");
    }
}

/// Every file and symlink under `root`, relative, sorted (directories left out).
fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.expect("directory entry");
            let kind = entry.file_type().expect("file type");
            let path = entry.path();
            if kind.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(root).expect("under root");
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// An x86-64 ELF executable without a program interpreter (PT_INTERP).
fn is_static_elf(path: &Path) -> bool {
    let Ok(bytes) = fs::read(path) else { return false };
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[32..40].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        bytes.get(at..at + 4).is_some_and(|t| u32::from_le_bytes(t.try_into().expect("4 bytes")) != 3)
    })
}

#[test]
fn identity_image() {
    check_image("weft-identity");
}

#[test]
fn destination_image() {
    check_image("weft-destination");
}

#[test]
fn injector_image() {
    check_image("weft-injector");
}

#[test]
fn proxy_image() {
    check_image("weft-proxy");
}

#[test]
fn cni_image() {
    check_image("weft-cni");
}

#[test]
fn proxy_init_image() {
    check_image("weft-proxy-init");
}

/// The Containerfile builds the same images where a registry is reachable:
/// one `FROM scratch`-based target per image, with the same user,
/// entrypoint and labels (checked without building it, which needs a
/// registry).
#[test]
fn containerfile_matches_the_images() {
    let text = read_source("Containerfile");
    let mut stages: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(from) = line.strip_prefix("FROM ") {
            let name = from.rsplit_once(" AS ").map_or("", |(_, n)| n.trim());
            stages.push((format!("{from}|{name}"), Vec::new()));
        } else if let Some((_, lines)) = stages.last_mut() {
            lines.push(line.to_string());
        }
    }
    let base = stages.iter().find(|(from, _)| from.ends_with("|base")).expect("a `base` stage");
    assert!(base.0.starts_with("scratch "), "the base stage is FROM scratch: {}", base.0);
    let base_text = base.1.join("\n");
    assert!(base_text.contains(&format!("ENV PATH={}", "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")));
    assert!(base_text.contains(&format!("org.opencontainers.image.source=\"{SOURCE}\"")));
    assert!(base_text.contains(&format!("ARG VERSION={VERSION}")), "Containerfile: ARG VERSION={VERSION}");
    for key in ["version", "revision", "licenses"] {
        assert!(base_text.contains(&format!("org.opencontainers.image.{key}=")), "base stage: label {key}");
    }
    for name in IMAGES {
        let (from, lines) = stages
            .iter()
            .find(|(from, _)| from.ends_with(&format!("|{name}")))
            .unwrap_or_else(|| panic!("Containerfile: no target {name}"));
        assert!(from.starts_with("base "), "{name} builds on the scratch base: {from}");
        let body = lines.join("\n");
        let user = expected_user(name);
        assert!(body.contains(&format!("\nUSER {user}\n")), "Containerfile {name}: USER {user}");
        assert!(
            body.contains(&format!("ENTRYPOINT [\"{BIN_DIR}/{name}\"]")),
            "Containerfile {name}: ENTRYPOINT [\"{BIN_DIR}/{name}\"]"
        );
        assert!(
            body.contains(&format!("COPY --from=build /out/{name} {BIN_DIR}/{name}")),
            "Containerfile {name}: the binary at {BIN_DIR}/{name}"
        );
        assert!(body.contains(&format!("org.opencontainers.image.title=\"{name}\"")), "{name}: title label");
    }
}
