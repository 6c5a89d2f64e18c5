"""The local stack's Kafka broker jars, straight from Maven Central.

`kafka_jars.txt` pins every runtime jar of the broker (group:artifact:version
and its SHA-256), so fetching them needs neither Maven nor ~/.m2: each jar is
downloaded over HTTPS, checked against its pinned digest, and named
`artifact-version.jar` as Maven's copy-dependencies names it, so a cache that
Maven filled still serves.

To move to another Kafka version: change `kafka.version` in kafka_pom.xml and
run `python -m worker.devtools.kafka_jars` (that one step needs Maven, which
resolves the dependencies and checks each jar against Central's .sha1).
Stdlib only.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

LOCK = Path(__file__).with_name("kafka_jars.txt")
POM = Path(__file__).with_name("kafka_pom.xml")
MAVEN_CENTRAL = "https://repo.maven.apache.org/maven2"
BROKER = ("org.apache.kafka", "kafka_2.13")
DOWNLOAD_TIMEOUT_S = 60.0
PARALLEL_DOWNLOADS = 4
HEADER = (
    "# Every runtime jar of the local stack's Kafka broker (kafka_pom.xml), with\n"
    "# its SHA-256. Made by `python -m worker.devtools.kafka_jars`; do not edit.\n"
)


class JarError(RuntimeError):
    """A jar could not be fetched, or is not the one pinned."""


@dataclass(frozen=True)
class Jar:
    group: str
    artifact: str
    version: str
    sha256: str

    @property
    def file_name(self) -> str:
        return f"{self.artifact}-{self.version}.jar"

    def url(self, repository: str = MAVEN_CENTRAL) -> str:
        path = "/".join([*self.group.split("."), self.artifact, self.version, self.file_name])
        return f"{repository.rstrip('/')}/{path}"

    def line(self) -> str:
        return f"{self.group}:{self.artifact}:{self.version} {self.sha256}"


def parse_lock(text: str) -> list[Jar]:
    jars = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            coordinates, sha256 = line.split()
            group, artifact, version = coordinates.split(":")
        except ValueError:
            raise JarError(f"{LOCK.name}:{number}: not 'group:artifact:version sha256'") from None
        jars.append(Jar(group, artifact, version, sha256.lower()))
    return jars


def pinned() -> list[Jar]:
    return parse_lock(LOCK.read_text())


def broker_version(jars: list[Jar]) -> str:
    for jar in jars:
        if (jar.group, jar.artifact) == BROKER:
            return jar.version
    raise JarError(f"no {':'.join(BROKER)} in {LOCK.name}")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(jar: Jar, into: Path, repository: str = MAVEN_CENTRAL) -> Path:
    """Download one jar into the folder `into`; raise JarError unless its
    SHA-256 is the pinned one (a partial file is left for the caller's
    temporary folder to take away)."""
    target = into / jar.file_name
    url = jar.url(repository)
    try:
        with (
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as answer,
            target.open("wb") as out,
        ):
            shutil.copyfileobj(answer, out, 1 << 20)
    except OSError as e:
        raise JarError(f"downloading {url} failed: {e}") from e
    if (got := sha256_of(target)) != jar.sha256:
        raise JarError(f"{url}: SHA-256 {got}, but {LOCK.name} pins {jar.sha256}")
    return target


def fetch_all(jars: list[Jar], into: Path, repository: str = MAVEN_CENTRAL) -> None:
    with ThreadPoolExecutor(PARALLEL_DOWNLOADS) as pool:
        # list() so that the first failure raises here.
        list(pool.map(lambda jar: fetch(jar, into, repository), jars))


def from_repository_layout(root: Path) -> list[Jar]:
    """The jars under a Maven repository layout (group/path/artifact/version/file)."""
    jars = []
    for path in sorted(root.rglob("*.jar")):
        *group, artifact, version, _ = path.relative_to(root).parts
        jars.append(Jar(".".join(group), artifact, version, sha256_of(path)))
    return sorted(jars, key=lambda jar: (jar.group, jar.artifact))


def write_lock() -> None:
    """Resolve kafka_pom.xml's runtime jars with Maven (-C: each checked
    against Central's .sha1) and pin them in kafka_jars.txt."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["mvn", "-q", "-B", "-C", "-f", str(POM), "dependency:copy-dependencies"]
        cmd += ["-DincludeScope=runtime", "-Dmdep.useRepositoryLayout=true"]
        subprocess.run([*cmd, f"-DoutputDirectory={tmp}"], check=True)
        jars = from_repository_layout(Path(tmp))
    LOCK.write_text(HEADER + "".join(f"{jar.line()}\n" for jar in jars))
    print(f"{len(jars)} jars pinned in {LOCK}")


if __name__ == "__main__":
    write_lock()
