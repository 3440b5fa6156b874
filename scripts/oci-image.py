#!/usr/bin/env python3
"""Writes weft's OCI image archives from already-built static binaries.

Called by scripts/build-images (see images/README.md); not meant to be run by
hand. Binaries are copied without their debug sections (`strip
--strip-debug`). No container daemon, registry, root or storage driver is involved:
each image is one deterministic tar layer (sorted entries, owner 0:0, every
mtime = SOURCE_DATE_EPOCH, gzip header without name or time), a config, a
manifest, `index.json` and `oci-layout` (the OCI image layout), plus the
docker-style `manifest.json`, all in one tar. The same inputs give the same
bytes, so the same digests.

    oci-image.py --bin-dir DIR --out DIR --version V --revision R --created EPOCH

The image table below is the contract with the chart and the injector (the
test tests/tests/images.rs checks it against them): binaries in
/usr/local/bin (on PATH: the injector's postStart hook runs `weft-proxy await`
by name), the control plane as 2103:2103 (charts/weft/values.yaml
podSecurityContext), the proxy as 2102:2102 (injector-webhook PROXY_UID),
proxy-init as 0:0 (the injector runs it as root with NET_ADMIN/NET_RAW).
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time

REGISTRY = "ghcr.io/weft-mesh"
SOURCE = "https://github.com/weft-mesh/weft"
LICENSE = "Apache-2.0"
BIN_DIR = "/usr/local/bin"
PATH = "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CONTROL_PLANE_USER = "2103:2103"
PROXY_USER = "2102:2102"

# name, user, description, needs iptables
IMAGES = [
    ("weft-identity", CONTROL_PLANE_USER, "weft identity: the mesh's certificate authority", False),
    ("weft-destination", CONTROL_PLANE_USER, "weft destination: service discovery and routing policy", False),
    ("weft-injector", CONTROL_PLANE_USER, "weft injector: the proxy-injecting admission webhook", False),
    ("weft-proxy", PROXY_USER, "weft proxy: the sidecar proxy", False),
    ("weft-proxy-init", "0:0", "weft proxy-init: the pod's iptables redirect rules", True),
    # Root: it writes the node's root-owned CNI directories (no capability).
    ("weft-cni", "0:0", "weft cni: the chained CNI plugin and its node installer", False),
]

# What weft-proxy-init runs (proxy-init/src/backend.rs): both backends, both
# families, save and restore.
IPTABLES_LINKS = [
    f"{family}-{backend}-{op}"
    for backend in ("nft", "legacy")
    for family in ("iptables", "ip6tables")
    for op in ("restore", "save")
]

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


class BuildError(Exception):
    pass


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def is_static(path: str) -> bool:
    """True when the ELF file has no program interpreter (PT_INTERP)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            raise BuildError(f"{path}: not a 64-bit little-endian ELF file")
        phoff = int.from_bytes(head[32:40], "little")
        phentsize = int.from_bytes(head[54:56], "little")
        phnum = int.from_bytes(head[56:58], "little")
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        if int.from_bytes(table[i * phentsize : i * phentsize + 4], "little") == 3:  # PT_INTERP
            return False
    return True


def stripped(binary: str) -> bytes:
    """The binary without its debug sections (line tables: 3/4 of a release
    binary), symbols kept so backtraces still name functions. The binary in
    target/ keeps them, for symbolising by build ID."""
    tmp = binary + ".image-tmp"
    try:
        out = subprocess.run(["strip", "--strip-debug", "-o", tmp, binary], capture_output=True, text=True)
        if out.returncode != 0:
            raise BuildError(f"strip --strip-debug {binary}: {out.stderr.strip()}")
        with open(tmp, "rb") as f:
            return f.read()
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class Rootfs:
    """The files of one layer: path (no leading slash) -> tar member + data."""

    def __init__(self, mtime: int):
        self.mtime = mtime
        self.entries = {}

    def _info(self, path: str, kind, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(path)
        info.type = kind
        info.mode = mode
        info.mtime = self.mtime
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    def dir(self, path: str, mode: int = 0o755):
        path = path.strip("/")
        if not path:
            return
        existing = self.entries.get(path)
        if existing is not None:
            if existing[0].type != tarfile.DIRTYPE:
                raise BuildError(f"/{path} is both a directory and a file or link")
            return
        self.dir(os.path.dirname(path))
        self.entries[path] = (self._info(path, tarfile.DIRTYPE, mode), None)

    def file(self, path: str, data: bytes, mode: int):
        path = path.strip("/")
        self.dir(os.path.dirname(path))
        info = self._info(path, tarfile.REGTYPE, mode)
        info.size = len(data)
        self.entries[path] = (info, data)

    def symlink(self, path: str, target: str):
        path = path.strip("/")
        self.dir(os.path.dirname(path))
        info = self._info(path, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.entries[path] = (info, None)

    def host_path(self, host: str):
        """Copies a host file to the same path, with every symlink on the way
        (`/lib64` -> `usr/lib64`, `libc.so.6` -> ...), so the loader finds it
        under the name the binary asks for."""
        host = os.path.normpath(host)
        parts = host.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            prefix = "/" + "/".join(parts[:i])
            if os.path.islink(prefix):
                target = os.readlink(prefix)
                self.symlink(prefix, target)
                resolved = os.path.normpath(os.path.join(os.path.dirname(prefix), target))
                rest = parts[i:]
                self.host_path(os.path.join(resolved, *rest) if rest else resolved)
                return
            if i < len(parts):
                self.dir(prefix)
        with open(host, "rb") as f:
            data = f.read()
        self.file(host, data, os.stat(host).st_mode & 0o755)

    def tar(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for path in sorted(self.entries):
                info, data = self.entries[path]
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()


def ldd_closure(paths):
    """Every shared object `ldd` says these ELF files load, the loader included."""
    found = set()
    for path in paths:
        out = subprocess.run(["ldd", path], capture_output=True, text=True)
        if out.returncode != 0:
            raise BuildError(f"ldd {path} failed: {out.stderr.strip() or out.stdout.strip()}")
        for line in out.stdout.splitlines():
            line = line.strip()
            m = re.match(r"^\S+ => (/\S+) \(0x[0-9a-f]+\)$", line) or re.match(r"^(/\S+) \(0x[0-9a-f]+\)$", line)
            if m:
                found.add(m.group(1))
            elif "not found" in line:
                raise BuildError(f"ldd {path}: {line}")
    return sorted(found)


def add_iptables(rootfs: Rootfs):
    """Debian's xtables-nft-multi and xtables-legacy-multi, the links
    weft-proxy-init runs, the xtables extensions they dlopen (`-m owner`,
    `-j REDIRECT`, ... and whatever `-save` finds in the pod's tables), and
    exactly the shared objects all of these load."""
    search = "/usr/sbin:/sbin:/usr/bin:/bin"
    multis = {}
    for backend in ("nft", "legacy"):
        exe = shutil.which(f"xtables-{backend}-multi", path=search)
        if exe is None:
            raise BuildError(f"xtables-{backend}-multi not found: install the Debian package iptables")
        multis[backend] = exe
    closure = ldd_closure(multis.values())
    libxtables = [p for p in closure if os.path.basename(p).startswith("libxtables.so")]
    if not libxtables:
        raise BuildError("xtables-nft-multi does not load libxtables: unexpected iptables build")
    ext_dir = os.path.join(os.path.dirname(os.path.realpath(libxtables[0])), "xtables")
    if not os.path.isdir(ext_dir):
        raise BuildError(f"iptables extensions not found in {ext_dir}")
    extensions = sorted(os.path.join(ext_dir, f) for f in os.listdir(ext_dir) if f.endswith(".so"))
    for path in sorted(set(closure + ldd_closure(extensions) + extensions + list(multis.values()))):
        rootfs.host_path(path)
    for link in IPTABLES_LINKS:
        backend = link.split("-")[1]
        exe = multis[backend]
        rootfs.symlink(os.path.join(os.path.dirname(exe), link), os.path.basename(exe))
    # iptables-legacy's lock (/run/xtables.lock); the injector mounts an
    # emptyDir here since the root filesystem is read-only.
    rootfs.dir("/run")


def build_image(name, user, description, iptables, args):
    binary = os.path.join(args.bin_dir, name)
    if not os.path.isfile(binary):
        raise BuildError(f"{binary} is missing (was it built?)")
    if not is_static(binary):
        raise BuildError(f"{binary} is dynamically linked; build with RUSTFLAGS='-C target-feature=+crt-static'")
    rootfs = Rootfs(args.created)
    rootfs.file(f"{BIN_DIR}/{name}", stripped(binary), 0o755)
    if iptables:
        add_iptables(rootfs)
    layer = rootfs.tar()
    gz = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=gz, mtime=0, compresslevel=9) as g:
        g.write(layer)
    layer_gz = gz.getvalue()

    ref = f"{REGISTRY}/{name}:{args.version}"
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(args.created))
    labels = {
        "org.opencontainers.image.title": name,
        "org.opencontainers.image.description": description,
        "org.opencontainers.image.source": SOURCE,
        "org.opencontainers.image.version": args.version,
        "org.opencontainers.image.revision": args.revision,
        "org.opencontainers.image.licenses": LICENSE,
        "org.opencontainers.image.created": created,
    }
    config = canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": {
                "User": user,
                "Env": [f"PATH={PATH}"],
                "Entrypoint": [f"{BIN_DIR}/{name}"],
                "WorkingDir": "/",
                "Labels": labels,
            },
            "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]},
            "history": [{"created": created, "created_by": "scripts/build-images"}],
        }
    )
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": MT_LAYER, "digest": sha256(layer_gz), "size": len(layer_gz)}],
            "annotations": {k: v for k, v in labels.items() if k != "org.opencontainers.image.description"},
        }
    )
    index = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MT_INDEX,
            "manifests": [
                {
                    "mediaType": MT_MANIFEST,
                    "digest": sha256(manifest),
                    "size": len(manifest),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "org.opencontainers.image.ref.name": ref,
                        "io.containerd.image.name": ref,
                    },
                }
            ],
        }
    )

    def blob(data):
        return "blobs/sha256/" + hashlib.sha256(data).hexdigest()

    # `docker load` reads this; containerd uses it for names too.
    docker = canonical_json([{"Config": blob(config), "RepoTags": [ref], "Layers": [blob(layer_gz)]}])
    members = [
        ("blobs", None),
        ("blobs/sha256", None),
        (blob(config), config),
        (blob(layer_gz), layer_gz),
        (blob(manifest), manifest),
        ("index.json", index),
        ("manifest.json", docker),
        ("oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"})),
    ]
    out = os.path.join(args.out, f"{name}-{args.version}.tar")
    tmp = out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path, data in sorted(members, key=lambda m: m[0]):
            info = tarfile.TarInfo(path)
            info.mtime = args.created
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.mode, info.size = 0o644, len(data)
                tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, out)
    print(
        f"{out}: {ref} {sha256(manifest)} "
        f"(layer {len(layer) / 1e6:.1f} MB, {len(layer_gz) / 1e6:.1f} MB compressed)"
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin-dir", help="directory holding the static binaries")
    p.add_argument("--out", help="directory for the archives")
    p.add_argument("--version")
    p.add_argument("--revision")
    p.add_argument("--created", type=int, help="SOURCE_DATE_EPOCH: every timestamp")
    p.add_argument("--only", action="append", default=[], help="build only this image (repeatable)")
    p.add_argument(
        "--iptables-rootfs",
        metavar="DIR",
        help="only write proxy-init's iptables files into DIR (the Containerfile's iptables stage)",
    )
    args = p.parse_args()
    try:
        if args.iptables_rootfs:
            rootfs = Rootfs(0)
            add_iptables(rootfs)
            with tarfile.open(fileobj=io.BytesIO(rootfs.tar())) as tar:
                # Absolute symlinks (/lib64/ld-linux-x86-64.so.2) are meant:
                # the "tar" filter keeps them where newer Pythons default to "data".
                if hasattr(tarfile, "tar_filter"):
                    tar.extractall(args.iptables_rootfs, filter="tar")
                else:
                    tar.extractall(args.iptables_rootfs)
            return
        missing = [f"--{a.replace('_', '-')}" for a in ("bin_dir", "out", "version", "revision", "created")
                   if getattr(args, a) is None]
        if missing:
            p.error(f"missing {', '.join(missing)}")
        known = [i[0] for i in IMAGES]
        for name in args.only:
            if name not in known:
                raise BuildError(f"unknown image {name}; known: {', '.join(known)}")
        os.makedirs(args.out, exist_ok=True)
        for name, user, description, iptables in IMAGES:
            if not args.only or name in args.only:
                build_image(name, user, description, iptables, args)
    except (BuildError, OSError) as e:
        sys.exit(f"build-images: {e}")


if __name__ == "__main__":
    main()
