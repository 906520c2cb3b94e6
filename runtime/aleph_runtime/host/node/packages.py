"""The packages volume: a program's Python dependencies as the network loads them.

    volume = build_packages(read_requirements(Path("requirements.txt")), Path("packages.squashfs"))
    print(volume.sha256, volume.size, volume.warnings)

A program ships its libraries as an immutable volume mounted at /opt/packages, first on
the init's sys.path. Built here:
- with the runtime image's own Python and pip, run in dev mode's container of that image
  (`BuildBox`: its namespaces, its network through pasta), so every wheel pip picks
  matches the network's interpreter and libc whatever this machine runs, and what a
  package's build runs reaches nothing of this machine;
- with bytecode at levels 0 and 2 (the init runs `python3 -OO`) as unchecked-hash
  .pyc, valid on a read-only volume whatever the files' times: nothing compiles at boot;
- packed as a reproducible squashfs (`program.reproducible_squashfs`): the same
  requirements give the same sha256.

`run` builds it through a cache keyed by the requirements, runtime and profile
(`cached_packages`); nothing is cached when pip fails, and its last lines are the error.
`aleph-runtime build` (`build_for_publishing`) writes it beside the code archive, with
aleph-client's command lines publishing both.
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

from aleph_runtime.guest.python_needed import RUNTIME_PYTHONS
from aleph_runtime.host.errors import NodeError, SetupError
from aleph_runtime.host.program import compile_bytecode_command, reproducible_squashfs
from aleph_runtime.host.vmm.image import DEFAULT_RUNTIME, RUNTIMES

Progress = Callable[[str], None]

PACKAGES_MOUNT = "/opt/packages"
#: Each runtime's Python (major.minor): its pyc magic and cache tag follow it. The guest's
#: table, which names the runtime a program needs, is the one source.
RUNTIME_PYTHON = {name: f"{major}.{minor}" for name, (major, minor) in RUNTIME_PYTHONS}
#: The largest file the network stores, hence the largest immutable volume a node can
#: fetch: pyaleph's ipfs.max_upload_file_size, 1 GiB (src/aleph/toolkit/constants.py,
#: DEFAULT_MAX_UPLOAD_FILE_SIZE; storage.max_file_size, 100 MiB, caps the `storage`
#: engine). aleph-vm itself sets no limit on an immutable volume (storage.py's
#: download_file: "TODO: Limit max size"), but cannot fetch what the network refused.
MAX_IMMUTABLE_VOLUME_BYTES = 1 << 30
MAX_STORAGE_ENGINE_BYTES = 100 << 20
#: At most this many files included by `-r`/`-c` lines are read into a cache key.
MAX_INCLUDED_FILES = 32
#: How many of pip's last output lines an error quotes.
ERROR_LINES = 15
#: Bumped when the way a volume is built changes: cached volumes are then rebuilt.
BUILD_VERSION = "1"
#: The pip settings passed into the image (a setting's file:// or local paths are bound in).
PIP_SETTINGS = ("index-url", "extra-index-url", "find-links", "trusted-host", "default-timeout", "no-index")
PIP_INSTALL_TIMEOUT = 1800
#: How many built volumes `run`'s cache keeps (the most recently built).
CACHED_VOLUMES = 8


class PackagesError(NodeError):
    """pip could not install the requirements; the message ends with its last lines."""


@dataclasses.dataclass
class Requirements:
    """What to install: the file it came from and the requirement lines pip reads."""

    source: Path
    text: str
    """A requirements file's content (a pyproject.toml's dependencies, one a line)."""

    @property
    def directory(self) -> Path:
        """Where relative paths in the requirements are read from (pip runs there)."""
        return self.source.parent

    def identity(self) -> str:
        """The text, with the files it includes (`-r`, `-c`) appended: what a build depends on."""
        parts, seen = [self.text], set()
        pending = [(self.directory, self.text)]
        while pending and len(seen) < MAX_INCLUDED_FILES:
            directory, text = pending.pop()
            for line in text.splitlines():
                words = line.split()
                if len(words) >= 2 and words[0] in ("-r", "-c", "--requirement", "--constraint"):
                    included = (directory / words[1]).resolve()
                    if included in seen or not included.is_file():
                        continue
                    seen.add(included)
                    try:
                        content = included.read_text(errors="replace")
                    except OSError:
                        continue
                    parts.append(f"{included}\0{content}")
                    pending.append((included.parent, content))
        return "\0".join(parts)

    def key(self, runtime: str, profile: str) -> str:
        """The cache key: these requirements (with what they include), for this runtime and profile."""
        digest = hashlib.sha256(f"{BUILD_VERSION}\0{runtime}\0{profile}\0{self.identity()}".encode())
        return digest.hexdigest()[:24]


@dataclasses.dataclass
class PackagesVolume:
    path: Path
    size: int
    sha256: str
    runtime: str
    profile: str
    distributions: dict[str, str]
    """name -> version, as installed in the volume."""
    warnings: list[str] = dataclasses.field(default_factory=list)

    def manifest(self) -> dict:
        return {
            "size": self.size, "sha256": self.sha256, "runtime": self.runtime, "profile": self.profile,
            "distributions": self.distributions, "warnings": self.warnings,
        }  # fmt: skip


# --- requirements ---


def dependencies_of_pyproject(path: Path) -> list[str]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise NodeError(f"cannot read {path}: {error}") from None
    dependencies = data.get("project", {}).get("dependencies", [])
    if not isinstance(dependencies, list) or not all(isinstance(item, str) for item in dependencies):
        raise NodeError(f"{path}: [project] dependencies must be a list of requirement strings")
    return dependencies


def find_requirements(directory: Path) -> Requirements | None:
    """A directory's requirements.txt, else its pyproject.toml's dependencies; None if neither
    (or a pyproject.toml without dependencies)."""
    text_file = directory / "requirements.txt"
    if text_file.is_file():
        return Requirements(text_file, text_file.read_text())
    pyproject = directory / "pyproject.toml"
    if pyproject.is_file():
        dependencies = dependencies_of_pyproject(pyproject)
        if dependencies:
            return Requirements(pyproject, "".join(line + "\n" for line in dependencies))
    return None


def read_requirements(source: Path) -> Requirements:
    """SRC of `aleph-runtime packages`: a requirements file, a pyproject.toml, or a directory holding one."""
    source = source.expanduser().resolve()
    if source.is_dir():
        found = find_requirements(source)
        if found is None:
            raise NodeError(f"{source} has no requirements.txt and no pyproject.toml with dependencies")
        return found
    if not source.is_file():
        raise NodeError(f"{source} does not exist")
    if source.name == "pyproject.toml":
        dependencies = dependencies_of_pyproject(source)
        if not dependencies:
            raise NodeError(f"{source} lists no [project] dependencies")
        return Requirements(source, "".join(line + "\n" for line in dependencies))
    try:
        return Requirements(source, source.read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise NodeError(f"cannot read {source}: {error}") from None


# --- the runtime image, and a command run inside it ---


def _check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise NodeError(f"--runtime {runtime}: one of {', '.join(RUNTIMES)}")


def runtime_image(runtime: str, profile: str | None, progress: Progress) -> Path:
    """The runtime image's squashfs for `runtime` and `profile`: the one place mapping a
    runtime to its image."""
    from aleph_runtime.host.vmm.image import ensure_rootfs

    _check_runtime(runtime)
    if os.geteuid() != 0:
        # A user cannot build one: the newest in the image cache, as dev mode runs.
        from aleph_runtime.host.container.rootfs import dev_image

        return dev_image(profile or "lean", runtime, progress=progress)
    progress(
        f"finding the {profile or 'lean'} runtime image ({runtime}; built through its cache when missing)"
    )
    return ensure_rootfs(profile or "lean", runtime=runtime)


def image_python_packages(image: Path) -> dict[str, str]:
    """name (normalised) -> version of the Python packages the image has (its manifest)."""
    from aleph_runtime.host.vmm.image import read_manifest

    try:
        packages = read_manifest(image).get("python_packages", {})
    except (OSError, ValueError):
        return {}
    return {normalise(name): version for name, version in packages.items()}


#: Where the host's CA bundle is bound in the build's container: pip trusts what this
#: machine trusts (a proxy's own CA, say), not only the bundle pip carries.
CA_BUNDLE_INSIDE = "/run/aleph-host-ca.crt"
#: Inputs the container's root could not read where they are (a directory only the host's
#: root may read, as pytest's or one under /root) are copied for it, up to this many bytes.
MAX_COPIED_INPUT_BYTES = 256 << 20


@dataclasses.dataclass
class InContainer:
    """A command run in the build's container to its end: its status, its last output, and
    the guarantees the container lacked."""

    returncode: int
    stdout: str
    warnings: list[str]


class BuildBox:
    """Dev mode's container of the runtime image (host/container/), for one build: pip and
    compileall run there with the image's Python, as the network's interpreter and libc, and
    whatever a package's build runs (an sdist's setup.py is the author's code, or anyone's)
    reaches nothing of this machine but the directories bound in, and the network through
    pasta, as a program in dev mode does. The same for root and for a user: the container's
    root is the host's root shifted to an unused range, or the user."""

    def __init__(self, image: Path, work: Path, shared: Path, progress: Progress):
        """`work`: the host's own directory for this build (the container's output, copies);
        `shared`: the directory in it the container's root writes (bound where asked)."""
        from aleph_runtime.host.container import rootfs
        from aleph_runtime.host.container.spawn import missing_tool, plan

        if why := missing_tool():
            raise SetupError(why)
        self.ids, self.user_namespace, _ = plan()  # why not a user namespace: in the container's warnings
        self.tree = rootfs.image_tree(image, self.ids, progress=progress)
        self.work = work
        rootfs.give(shared, self.ids)
        self._copies = 0

    def readable(self, directory: Path) -> Path:
        """`directory` itself when the container's root may read it, else a copy it may read."""
        from aleph_runtime.host.container import rootfs

        info = directory.stat()
        if os.geteuid() != 0 or info.st_uid == self.ids.uid or info.st_mode & 0o005 == 0o005:
            return directory
        size = 0
        for path in directory.rglob("*"):
            with contextlib.suppress(OSError):
                size += path.lstat().st_size
            if size > MAX_COPIED_INPUT_BYTES:
                raise PackagesError(
                    f"{directory} is readable by its owner only and over {MAX_COPIED_INPUT_BYTES >> 20} MiB to "
                    "copy for the build's container: let others read it (chmod o+rx)"
                )
        self._copies += 1
        copy = self.work / "inputs" / str(self._copies)
        shutil.copytree(directory, copy, symlinks=True)
        rootfs.give(copy, self.ids)
        return copy

    def run(
        self,
        command: list[str],
        *,
        binds: list[tuple[Path, bool]],
        env: dict[str, str],
        cwd: Path,
        network: bool = False,
        timeout: float = PIP_INSTALL_TIMEOUT,
    ) -> InContainer:
        """`command` run in the container at `cwd`, with the directories `binds` (path,
        read_only) at their own paths and, with `network`, this machine's DNS and CA bundle
        and a network as a VM's (pasta). Output (stdout and stderr merged) is returned, never shown."""
        from aleph_runtime.host.container.network import NetworkSpec, resolv_conf
        from aleph_runtime.host.container.spawn import Bind, ContainerSpec, run_to_end

        mounts = [
            Bind(self.readable(path) if read_only else path, str(path), "ro" if read_only else "rw")
            for path, read_only in binds
        ]
        inside_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", **env}
        spec_network = None
        if network:
            resolvers = self.work / ".resolv.conf"
            resolvers.write_text(resolv_conf())
            mounts.append(Bind(resolvers, "/etc/resolv.conf", "ro"))
            bundle = _ca_bundle()
            if bundle:
                mounts.append(Bind(Path(bundle), CA_BUNDLE_INSIDE, "ro"))
                inside_env.setdefault("PIP_CERT", CA_BUNDLE_INSIDE)
            spec_network = NetworkSpec(configure=True)
        spec = ContainerSpec(
            self.tree, command, ids=self.ids, env=inside_env, binds=mounts, network=spec_network,
            user_namespace=self.user_namespace, cwd=str(cwd),
        )  # fmt: skip
        # Synchronous, as build_packages is: an async caller runs it in a thread (asyncio.to_thread).
        ended = asyncio.run(run_to_end(spec, self.work, timeout=timeout))
        if ended.status is None:
            raise NodeError(f"{' '.join(command[:4])} took longer than {timeout:.0f} s")
        return InContainer(ended.status, ended.output, ended.warnings)


# --- pip's settings from this machine ---


def _ca_bundle() -> str | None:
    for candidate in (
        os.environ.get("PIP_CERT"),
        os.environ.get("SSL_CERT_FILE"),
        "/etc/ssl/certs/ca-certificates.crt",
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def _pip_config_files() -> list[Path]:
    """pip's configuration files, in the order pip reads them (later ones win)."""
    home = Path.home()
    xdg_dirs = os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":")
    files = [Path(directory) / "pip" / "pip.conf" for directory in reversed(xdg_dirs)]
    files.append(Path("/etc/pip.conf"))
    files += [
        home / ".pip" / "pip.conf",
        Path(os.environ.get("XDG_CONFIG_HOME", home / ".config")) / "pip" / "pip.conf",
    ]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    return files


def host_pip_settings() -> dict[str, str]:
    """This machine's index settings (pip's config files, then PIP_* variables), as PIP_* variables."""
    settings: dict[str, str] = {}
    for path in _pip_config_files():
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path)
        except (OSError, configparser.Error):
            continue
        for section in ("global", "install"):
            if parser.has_section(section):
                for key in PIP_SETTINGS:
                    if parser.has_option(section, key):
                        settings[key] = parser.get(section, key)
    for key in PIP_SETTINGS:
        variable = "PIP_" + key.upper().replace("-", "_")
        if variable in os.environ:
            settings[key] = os.environ[variable]
    return {
        "PIP_" + key.upper().replace("-", "_"): " ".join(value.split()) for key, value in settings.items()
    }


def local_paths(settings: dict[str, str]) -> list[Path]:
    """The local directories the settings name (find-links, file:// indexes): bound into the
    image. An index's parent too: a local PEP 503 index links its files as ../../files/..."""
    paths = []
    for key in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        for item in settings.get(key, "").split():
            if item.startswith("file://"):
                path = Path(unquote(urlparse(item).path))
            elif item.startswith("/"):
                path = Path(item)
            else:
                continue
            directory = path if path.is_dir() else path.parent
            if key != "PIP_FIND_LINKS" and directory.parent != Path("/"):
                directory = directory.parent
            if directory.is_dir():
                paths.append(directory)
    return paths


# --- building ---


def normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def installed_distributions(site: Path) -> dict[str, str]:
    """name -> version of the distributions pip installed into `site` (their METADATA)."""
    found = {}
    for info in sorted(site.glob("*.dist-info")):
        name = version = None
        try:
            for line in (info / "METADATA").read_text(errors="replace").splitlines():
                if line.startswith("Name:"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("Version:"):
                    version = line.split(":", 1)[1].strip()
                elif not line:
                    break
        except OSError:
            continue
        if name and version:
            found[name] = version
    return found


def version_warnings(installed: dict[str, str], image_packages: dict[str, str]) -> list[str]:
    """One line per distribution the image also has, at another version."""
    warnings = []
    for name, version in sorted(installed.items()):
        theirs = image_packages.get(normalise(name))
        if theirs is not None and theirs != version:
            warnings.append(
                f"{name}: the volume has {version}, the runtime image {theirs}; the program imports {version} "
                f"({PACKAGES_MOUNT} comes first on sys.path)"
            )
    return warnings


def size_warning(size: int) -> str | None:
    if size > MAX_IMMUTABLE_VOLUME_BYTES:
        return (
            f"the volume is {size / 2**20:.0f} MiB: over the {MAX_IMMUTABLE_VOLUME_BYTES >> 20} MiB the network "
            "stores for a file, so no node can fetch it as an immutable volume; trim the requirements"
        )
    if size > MAX_STORAGE_ENGINE_BYTES:
        return (
            f"the volume is {size / 2**20:.0f} MiB: over {MAX_STORAGE_ENGINE_BYTES >> 20} MiB, upload it "
            "with --storage-engine ipfs (aleph-client's default above 4 MiB)"
        )
    return None


#: What a build that needed a compiler or Python's headers says when the image has none.
COMPILER_MISSING = ("'cc'", "'gcc'", "x86_64-linux-gnu-gcc", "cc: not found", "gcc: not found", "Python.h")


def compiler_hint(output: str, profile: str | None) -> str:
    """A hint when pip failed building from source for want of a compiler (the lean image has none)."""
    if (profile or "lean") != "lean" or not any(marker in output for marker in COMPILER_MISSING):
        return ""
    return (
        "\n(a package was built from source and needs a C compiler or Python's headers: the lean image "
        "has neither; --profile full has gcc and the headers, or pin a version with a wheel for "
        "CPython 3.11 on manylinux)"
    )


def _tail(output: str, lines: int = ERROR_LINES) -> str:
    kept = [line for line in output.rstrip().splitlines() if line.strip()]
    return "\n".join("  " + line for line in kept[-lines:])


def build_packages(
    requirements: Requirements,
    out: Path,
    *,
    runtime: str = DEFAULT_RUNTIME,
    profile: str | None = None,
    find_links: list[Path] = (),
    no_index: bool = False,
    cache: Path | None = None,
    progress: Progress = lambda message: None,
) -> PackagesVolume:
    """Install `requirements` with the runtime image's pip, compile them, pack them into `out`."""
    from aleph_runtime.host.container.rootfs import cache_root

    cache = cache or cache_root().parent  # the runtime's cache as root, the user's own otherwise
    image = runtime_image(runtime, profile, progress)
    settings = host_pip_settings()
    if no_index:
        settings = {key: value for key, value in settings.items() if key == "PIP_DEFAULT_TIMEOUT"}
        settings["PIP_NO_INDEX"] = "1"
    links = [Path(path).resolve() for path in find_links]
    for link in links:
        if not link.exists():
            raise PackagesError(f"--find-links {link}: no such file or directory")
    if links:
        settings["PIP_FIND_LINKS"] = " ".join([*map(str, links), *settings.get("PIP_FIND_LINKS", "").split()])
    env = {
        **settings, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1",
        "PIP_ROOT_USER_ACTION": "ignore", "PYTHONDONTWRITEBYTECODE": "1",
    }  # fmt: skip
    work_parent = cache / "tmp"
    work_parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="packages-", dir=work_parent))
    try:
        shared = work / "shared"
        site = shared / "site"
        site.mkdir(parents=True)
        # A requirements file is read where it is (its `-r` and `-c` lines are relative to it);
        # a pyproject.toml's dependencies are written out as one.
        if requirements.source.name == "pyproject.toml":
            requirements_file = shared / "requirements.txt"
            requirements_file.write_text(requirements.text)
        else:
            requirements_file = requirements.source
        binds = [(shared, False), (requirements.directory, True)]
        # A find-links file (a page of links) is read with its directory, where its links point.
        directories = [link if link.is_dir() else link.parent for link in links]
        binds += [
            (path, True) for path in dict.fromkeys([*directories, *local_paths(settings)]) if path != shared
        ]
        box = BuildBox(image, work, shared, progress)  # the container's root owns `shared` from here
        progress(
            f"installing {requirements.source} with the image's pip (Python of {runtime}, {profile or 'lean'}), "
            "in a container of the image"
        )
        installed = box.run(
            ["python3", "-m", "pip", "install", "--target", str(site), "--no-compile", "--prefer-binary",
             "--break-system-packages", "--no-warn-script-location", "--progress-bar", "off",
             "-r", str(requirements_file)],
            binds=binds, env=env, cwd=requirements.directory, network=not no_index,
        )  # fmt: skip
        if installed.returncode != 0:
            message = f"pip could not install {requirements.source}:\n{_tail(installed.stdout)}"
            lacking = "".join(f"\n({warning})" for warning in installed.warnings)
            raise PackagesError(message + compiler_hint(installed.stdout, profile) + lacking)
        progress("writing bytecode (levels 0 and 2, unchecked-hash) with the image's Python")
        compiled = box.run(
            compile_bytecode_command(site, PACKAGES_MOUNT), binds=[(shared, False)], env={}, cwd=shared
        )
        warnings = []
        if compiled.returncode != 0:
            # A file pip installed that this Python cannot compile (one for another version,
            # a template): it is never imported, or fails at import as it would anyway.
            failed = [line for line in compiled.stdout.splitlines() if line.startswith("***")]
            warnings.append(f"{len(failed) or 'some'} files could not be byte-compiled (left as source)")
        distributions = installed_distributions(site)
        warnings += version_warnings(distributions, image_python_packages(image))
        progress(f"packing {len(distributions)} distributions as squashfs")
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(f".{out.name}.{os.getpid()}.partial")  # two builds of one key do not mix
        try:
            reproducible_squashfs(site, partial)
            partial.replace(out)
        finally:
            partial.unlink(missing_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = out.stat().st_size
    warning = size_warning(size)
    if warning:
        warnings.append(warning)
    return PackagesVolume(out, size, _sha256(out), runtime, profile or "lean", distributions, warnings)


def cached_packages(
    requirements: Requirements,
    cache: Path,
    *,
    runtime: str = DEFAULT_RUNTIME,
    profile: str | None = None,
    progress: Progress = lambda message: None,
) -> tuple[PackagesVolume, bool]:
    """The volume for `requirements` from `cache` (built when missing); (volume, was it cached)."""
    key = requirements.key(runtime, profile or "lean")
    path = cache / f"{key}.squashfs"
    manifest = cache / f"{key}.json"
    if path.is_file() and manifest.is_file():
        try:
            data = json.loads(manifest.read_text())
            return PackagesVolume(path, data["size"], data["sha256"], data["runtime"], data["profile"],
                                  data["distributions"], data.get("warnings", [])), True  # fmt: skip
        except (OSError, ValueError, KeyError):
            pass
    volume = build_packages(requirements, path, runtime=runtime, profile=profile, progress=progress)
    manifest.write_text(json.dumps(volume.manifest(), indent=1))
    prune_cache(cache)
    return volume, False


def prune_cache(cache: Path, keep: int = CACHED_VOLUMES) -> None:
    """Each edit of the requirements is a new volume: all but the `keep` newest go."""
    built = sorted(cache.glob("*.squashfs"), key=lambda item: item.stat().st_mtime_ns, reverse=True)
    for old in built[keep:]:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)


#: aleph-vm refuses code sent inline (zip, tar) above this size ("Program file too large to
#: pass as an inline zip": settings.MAX_PROGRAM_ARCHIVE_SIZE, src/aleph/vm/conf.py); squashfs
#: code is a drive and is not limited.
MAX_INLINE_CODE_BYTES = 10_000_000


def build_for_publishing(
    source: Path, out: Path, *, encoding: str | None = None, runtime: str = DEFAULT_RUNTIME,
    profile: str | None = None, progress: Progress = lambda message: None,
) -> list[str]:  # fmt: skip
    """`aleph-runtime build`: the program's code archive (with bytecode) and its packages volume
    written into `out`, as files to publish; the lines to print (what was written, how to publish)."""
    from aleph_runtime.host.node.inference import infer_program
    from aleph_runtime.host.program import bytecode_matches, squashfs_directory, zip_directory
    from aleph_runtime.protocol import Encoding

    _check_runtime(runtime)
    program = infer_program(source, encoding=encoding)
    if program.directory is None:
        raise NodeError(f"{source} is not a directory: `aleph program upload` takes the file as it is")
    if program.encoding not in (Encoding.ZIP, Encoding.SQUASHFS):
        raise NodeError("aleph-client publishes a directory as zip or squashfs: --encoding zip|squashfs")
    out.mkdir(parents=True, exist_ok=True)
    bytecode = bytecode_matches(RUNTIME_PYTHON[runtime])
    if not bytecode:
        progress(f"this Python ({sys.version.split()[0]}) does not write the bytecode of the runtime's "
                 f"({RUNTIME_PYTHON[runtime]}): the code is packed without it")  # fmt: skip
    lines = []
    if program.encoding is Encoding.SQUASHFS:
        code = squashfs_directory(program.directory, out / "code.squashfs", bytecode=bytecode)
    else:
        code = out / "code.zip"
        code.write_bytes(zip_directory(program.directory, bytecode=bytecode))
    size = code.stat().st_size
    with_bytecode = ", with bytecode" if bytecode else ""
    lines.append(f"{code}: {program.encoding}{with_bytecode}, {size / 1024:.0f} KiB, sha256 {_sha256(code)}")
    if program.encoding is Encoding.ZIP and size > MAX_INLINE_CODE_BYTES:
        lines.append(f"warning: over the {MAX_INLINE_CODE_BYTES // 10**6} MB a node takes as inline code: "
                     "use --encoding squashfs")  # fmt: skip
    requirements = find_requirements(program.directory)
    volume_path = None
    if requirements is not None:
        volume = build_packages(requirements, out / "packages.squashfs", runtime=runtime, profile=profile,
                                progress=progress)  # fmt: skip
        volume_path = str(volume.path)
        lines.append(f"{volume.path}: {len(volume.distributions)} distributions from {requirements.source}, "
                     f"{volume.size / 2**20:.1f} MiB, sha256 {volume.sha256}")  # fmt: skip
        lines += [f"warning: {warning}" for warning in volume.warnings]
    lines.append("publish with aleph-client:")
    if volume_path is not None:
        lines += [f"  {line}" for line in publish_lines(volume_path, str(code), program.entrypoint)]
    else:
        lines.append(f"  aleph program upload {code} {program.entrypoint}")
    return lines


def publish_lines(volume_path: str, code_path: str | None = None, entrypoint: str = "main:app") -> list[str]:
    """aleph-client's command lines publishing the volume (and the code referencing it)."""
    code = code_path or "CODE"
    return [
        f"aleph file upload {volume_path}   # the item_hash of the STORE message it prints is the volume's ref",
        f"aleph program upload {code} {entrypoint} --immutable-volume mount={PACKAGES_MOUNT},ref=<item_hash>",
    ]


def _sha256(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()
