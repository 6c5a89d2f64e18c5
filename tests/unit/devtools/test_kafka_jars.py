"""The pinned Kafka jars: where each comes from, and a jar that is not the
pinned one is refused. Downloads come from a folder laid out like Maven
Central, through a file: URL."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from worker.devtools import kafka_jars, stack_kafka
from worker.devtools.kafka_jars import Jar, JarError

CONTENT = b"PK\x03\x04 not really a jar"
JAR = Jar("com.github.luben", "zstd-jni", "1.5.6-10", hashlib.sha256(CONTENT).hexdigest())


def repository(tmp_path: Path, content: bytes = CONTENT) -> str:
    folder = tmp_path / "repo" / "com" / "github" / "luben" / "zstd-jni" / "1.5.6-10"
    folder.mkdir(parents=True)
    (folder / "zstd-jni-1.5.6-10.jar").write_bytes(content)
    return (tmp_path / "repo").as_uri()


def test_a_jar_is_named_and_found_as_on_maven_central() -> None:
    assert JAR.file_name == "zstd-jni-1.5.6-10.jar"
    assert JAR.url() == (
        "https://repo.maven.apache.org/maven2/com/github/luben/zstd-jni/1.5.6-10/zstd-jni-1.5.6-10.jar"
    )


def test_the_lock_pins_the_broker_of_the_pom_and_nothing_twice() -> None:
    jars = kafka_jars.pinned()
    assert kafka_jars.broker_version(jars) == stack_kafka.kafka_version()
    assert len({jar.file_name for jar in jars}) == len(jars) == 46
    assert all(len(jar.sha256) == 64 for jar in jars)


def test_a_lock_line_reads_back_as_written() -> None:
    text = f"# comment\n\n{JAR.line()}\n"
    assert kafka_jars.parse_lock(text) == [JAR]
    with pytest.raises(JarError, match=r"kafka_jars.txt:1: not 'group:artifact:version sha256'"):
        kafka_jars.parse_lock("com.github.luben:zstd-jni 0123\n")


def test_a_jar_with_its_pinned_digest_is_kept(tmp_path: Path) -> None:
    into = tmp_path / "libs"
    into.mkdir()
    kafka_jars.fetch_all([JAR], into, repository(tmp_path))
    assert [p.name for p in into.iterdir()] == ["zstd-jni-1.5.6-10.jar"]
    assert (into / JAR.file_name).read_bytes() == CONTENT


def test_a_jar_with_another_digest_is_refused(tmp_path: Path) -> None:
    base = repository(tmp_path, content=b"tampered")
    with pytest.raises(JarError, match=f"SHA-256 {hashlib.sha256(b'tampered').hexdigest()}, but"):
        kafka_jars.fetch(JAR, tmp_path, base)


def test_a_missing_jar_names_its_url(tmp_path: Path) -> None:
    base = (tmp_path / "empty").as_uri()
    with pytest.raises(JarError, match=r"downloading file:.*zstd-jni-1\.5\.6-10\.jar failed"):
        kafka_jars.fetch(JAR, tmp_path, base)


def test_the_lock_is_made_from_a_repository_layout(tmp_path: Path) -> None:
    repository(tmp_path)
    assert kafka_jars.from_repository_layout(tmp_path / "repo") == [JAR]
