"""Real Dockerfile builds through Amber's BuildKit path: dockerd started by the fixture, loopback registries."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from amber.buildkit.build import DockerfileBuildRequest, DockerfileBuildResult, build_dockerfile_rootfs
from amber.buildkit.daemon import ManagedDockerd
from amber.buildkit.session import RegistryCredential
from amber.contract.failures import BuildFailed, FailurePhase
from amber.contract.logs import CacheStatus, LogEvent, LogKind, LogPhase
from tests.buildkit.conftest import ContextFile, Images, scan_for


@dataclass
class Run:
    """One build's outcome and every log event it emitted."""

    result: DockerfileBuildResult | None
    events: list[LogEvent] = field(default_factory=list)
    error: BaseException | None = None

    @property
    def tree(self) -> Path:
        assert self.result is not None, self.error
        assert self.result.tree is not None  # no want_tree: the tree is always exported
        return self.result.tree

    def messages(self) -> list[str]:
        return [e.message for e in self.events]


def build(
    dockerd: ManagedDockerd,
    work: Path,
    dockerfile: str | None,
    *,
    files: Sequence[ContextFile] = (),
    secrets: Mapping[str, str] | None = None,
    credentials: Mapping[str, RegistryCredential] | None = None,
    base_credential: RegistryCredential | None = None,
    cancel_after_s: float | None = None,
    **fields: object,
) -> Run:
    """Run one build into ``work/tree``; BuildFailed is captured in ``Run.error``."""
    shutil.rmtree(work, ignore_errors=True)
    run = Run(None)

    async def emit(event: LogEvent) -> None:
        run.events.append(event)

    async def main() -> None:
        cancel = asyncio.Event()
        if cancel_after_s is not None:
            asyncio.get_running_loop().call_later(cancel_after_s, cancel.set)
        request = DockerfileBuildRequest(dockerfile=dockerfile, context_files=list(files), **fields)  # type: ignore[arg-type]
        run.result = await build_dockerfile_rootfs(
            request,
            dockerd=dockerd,
            target_dir=work / "tree",
            staging_dir=work / "staging",
            emit=emit,
            cancel=cancel,
            secrets=secrets,
            registry_credentials=credentials,
            base_image_credential=base_credential,
        )

    try:
        asyncio.run(main())
    except (BuildFailed, asyncio.CancelledError) as error:
        run.error = error
    return run


MULTI_STAGE = """\
ARG BASE
FROM ${{BASE}} AS base
ARG GREETING=hi
RUN echo "$GREETING" > /greeting
FROM base AS builder
COPY app/ /app/
RUN --mount=type=secret,id=token cat /run/secrets/token | sha256sum | cut -d' ' -f1 > /app/secret.sha
FROM base AS final
COPY --from=builder /app /app
RUN ls /run/secrets > /app/secrets-dir.txt 2>&1 || true
USER 1000:1000
WORKDIR /app
ENV MODE=production
EXPOSE 8080
VOLUME /data
LABEL org.example.team=amber
HEALTHCHECK --interval=5s --retries=2 CMD test -f /app/hello.txt
FROM final AS unused
RUN echo this stage must not run && exit 1
"""


def test_multi_stage_target_args_copy_and_secret(dockerd: ManagedDockerd, images: Images, tmp_path: Path) -> None:
    secret = "s3cr3t-value-for-amber-" + "x" * 8
    files = [ContextFile.text("sub/Dockerfile", MULTI_STAGE.format()), ContextFile.text("app/hello.txt", "hello\n")]
    run = build(
        dockerd,
        tmp_path / "b",
        None,
        dockerfile_path="sub/Dockerfile",  # -f inside the uploaded context
        files=files,
        build_args={"BASE": images.public, "GREETING": "hello-arg"},
        build_target="final",
        secrets={"token": secret},
    )
    tree = run.tree
    assert (tree / "greeting").read_text() == "hello-arg\n"
    assert (tree / "app/hello.txt").read_text() == "hello\n"
    assert (tree / "app/secret.sha").read_text().strip() == hashlib.sha256(secret.encode()).hexdigest()
    assert (tree / "bin/busybox").is_file()
    assert not (tree / "run/secrets/token").exists()
    assert scan_for(tree, [secret.encode()]) == []
    config = run.result.image_config  # type: ignore[union-attr]
    assert config.user == "1000:1000" and config.working_dir == "/app"
    assert config.env_map["MODE"] == "production"
    assert config.exposed_ports == ("8080/tcp",) and config.volumes == ("/data",)
    assert config.labels == {"org.example.team": "amber"}
    assert config.healthcheck is not None and config.healthcheck.test == ("CMD-SHELL", "test -f /app/hello.txt")
    assert config.healthcheck.interval_ns == 5_000_000_000 and config.healthcheck.retries == 2
    assert run.result.used_cache is False  # type: ignore[union-attr]
    steps = [e for e in run.events if e.phase is LogPhase.STEP and e.kind is LogKind.MESSAGE]
    assert any('RUN echo "$GREETING"' in e.message or "RUN echo" in e.message for e in steps)
    assert "hello-arg" not in " ".join(m for m in run.messages() if "this stage must not run" in m)
    assert not any("this stage must not run" in m for m in run.messages())
    assert any(e.kind is LogKind.CACHE and e.cache_status is CacheStatus.BYPASS for e in run.events)
    assert all(secret not in m for m in run.messages())


def test_inline_dockerfile_cache_hits_and_output_lines(dockerd: ManagedDockerd, images: Images, tmp_path: Path) -> None:
    dockerfile = f"FROM {images.public}\nCOPY data.txt /data.txt\nRUN echo built-line-1 && echo built-line-2 > /out\n"
    files = [ContextFile.text("data.txt", "payload\n")]
    first = build(dockerd, tmp_path / "one", dockerfile, files=files)
    assert (first.tree / "data.txt").read_text() == "payload\n"
    assert not any(p.name.startswith(".dockerfile.") for p in first.tree.iterdir())  # inline Dockerfile not copied
    second = build(dockerd, tmp_path / "two", dockerfile, files=files)
    hits = [e for e in second.events if e.kind is LogKind.CACHE and e.cache_status is CacheStatus.HIT]
    assert {e.cache_subject for e in hits} >= {
        "[2/3] COPY data.txt /data.txt",
        "[3/3] RUN echo built-line-1 && echo built-line-2 > /out",
    }
    assert all(e.phase is LogPhase.STEP and e.step_index is not None for e in hits)
    assert (second.tree / "out").read_text() == "built-line-2\n"
    assert first.result is not None and second.result is not None
    assert first.result.dockerfile_digest == second.result.dockerfile_digest
    assert first.result.dockerfile_digest == "sha256:" + hashlib.sha256(dockerfile.encode()).hexdigest()
    # Output lines of a step that really ran are entries of that step.
    run_step = next(e for e in first.events if e.message.startswith("[3/3] RUN"))
    lines = [e for e in first.events if e.message == "built-line-1"]
    assert lines and lines[0].step_index == run_step.step_index and lines[0].phase is LogPhase.STEP


def test_two_secret_values_give_two_results(dockerd: ManagedDockerd, images: Images, tmp_path: Path) -> None:
    dockerfile = (
        f"FROM {images.public}\nRUN --mount=type=secret,id=k cat /run/secrets/k 2>/dev/null | sha256sum > /k.sha\n"
    )
    one = build(dockerd, tmp_path / "a", dockerfile, secrets={"k": "value-number-one"})
    two = build(dockerd, tmp_path / "b", dockerfile, secrets={"k": "value-number-two"})
    assert (one.tree / "k.sha").read_text() != (two.tree / "k.sha").read_text()
    assert hashlib.sha256(b"value-number-two").hexdigest() in (two.tree / "k.sha").read_text()
    # A later build without secrets never sees a secret build's result.
    plain = build(dockerd, tmp_path / "c", dockerfile)
    assert hashlib.sha256(b"value-number-two").hexdigest() not in (plain.tree / "k.sha").read_text()
    assert not any(
        e.kind is LogKind.CACHE and e.cache_status is CacheStatus.HIT and "RUN" in e.message for e in plain.events
    )
    # And a secret build after that plain one reuses none of its steps; only the base image's layers, which are
    # content-addressed and were access-checked for this caller, are taken from the store.
    three = build(dockerd, tmp_path / "d", dockerfile, secrets={"k": "value-number-three"})
    assert hashlib.sha256(b"value-number-three").hexdigest() in (three.tree / "k.sha").read_text()
    hits = [e.message for e in three.events if e.kind is LogKind.CACHE and e.cache_status is CacheStatus.HIT]
    assert all(" FROM " in hit for hit in hits), hits


def test_failed_step_names_step_and_redacts_secret(dockerd: ManagedDockerd, images: Images, tmp_path: Path) -> None:
    secret = "leaky-secret-value-42"
    dockerfile = f"FROM {images.public}\nRUN --mount=type=secret,id=s cat /run/secrets/s; echo; exit 3\n"
    run = build(dockerd, tmp_path / "f", dockerfile, secrets={"s": secret})
    assert isinstance(run.error, BuildFailed)
    assert run.error.phase is FailurePhase.BUILD_STEP and run.error.step_index == 2
    assert "(Dockerfile line 2) exited with code 3; last output:\n***" in run.error.message
    assert run.error.details == {"command": "RUN --mount=type=secret,id=s cat /run/secrets/s; echo; exit 3",
                                 "exit_code": 3, "dockerfile_line": 2}  # fmt: skip
    assert secret not in run.error.message
    assert any(e.message == "***" for e in run.events)  # the printed secret, redacted
    assert all(secret not in e.message for e in run.events)


def test_private_base_htpasswd_right_wrong_missing(dockerd: ManagedDockerd, images: Images, tmp_path: Path) -> None:
    registry = images.htpasswd_registry
    dockerfile = f"FROM {images.htpasswd}\nRUN echo private > /which\n"
    good = build(dockerd, tmp_path / "ok", dockerfile, credentials={registry.host: images.credential(registry)})
    assert (good.tree / "which").read_text() == "private\n"
    wrong = build(
        dockerd, tmp_path / "bad", dockerfile, credentials={registry.host: RegistryCredential("amber-user", "nope")}
    )
    assert isinstance(wrong.error, BuildFailed) and wrong.error.phase is FailurePhase.AUTH
    assert images.htpasswd in wrong.error.message and "rejected the credentials" in wrong.error.message
    assert "nope" not in wrong.error.message
    missing = build(dockerd, tmp_path / "none", dockerfile)
    assert isinstance(missing.error, BuildFailed) and missing.error.phase is FailurePhase.AUTH


def test_private_base_token_auth_and_second_tenant(dockerd: ManagedDockerd, images: Images, tmp_path: Path) -> None:
    registry = images.token_registry
    credential = images.credential(registry)
    dockerfile = f"FROM {images.token_private}\nRUN echo tenant > /who\n"
    first = build(dockerd, tmp_path / "t1", dockerfile, base_credential=credential)  # base_image_auth path
    assert (first.tree / "who").read_text() == "tenant\n"
    # The same image pinned by digest is in BuildKit's cache now; another tenant without credentials must fail.
    digest_line = next(e.message for e in first.events if "FROM" in e.message and "@sha256:" in e.message)
    digest = digest_line.split("@", 1)[1].split()[0]
    pinned = f"FROM {images.token_private.rsplit(':', 1)[0]}@{digest}\nRUN echo tenant2 > /who\n"
    second = build(dockerd, tmp_path / "t2", pinned)
    assert isinstance(second.error, BuildFailed) and second.error.phase is FailurePhase.AUTH
    wrong = build(dockerd, tmp_path / "t3", pinned, base_credential=RegistryCredential(credential.username, "bad"))
    assert isinstance(wrong.error, BuildFailed) and wrong.error.phase is FailurePhase.AUTH
    again = build(dockerd, tmp_path / "t4", pinned, credentials={registry.host: credential})
    assert (again.tree / "who").read_text() == "tenant2\n"


def test_network_follows_internet_access(dockerd: ManagedDockerd, images: Images, tmp_path: Path) -> None:
    dockerfile = f"FROM {images.public}\nRUN cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' > /ifaces\n"
    offline = build(dockerd, tmp_path / "off", dockerfile, internet_access=False, skip_cache=True)
    assert (offline.tree / "ifaces").read_text().split() == ["lo"]
    online = build(dockerd, tmp_path / "on", dockerfile, internet_access=True, skip_cache=True)
    assert len((online.tree / "ifaces").read_text().split()) > 1


def test_cancel_stops_the_build(dockerd: ManagedDockerd, images: Images, tmp_path: Path) -> None:
    dockerfile = f"FROM {images.public}\nRUN sleep 60\n"
    started = time.monotonic()
    run = build(dockerd, tmp_path / "c", dockerfile, skip_cache=True, cancel_after_s=2.0)
    assert isinstance(run.error, asyncio.CancelledError)
    assert time.monotonic() - started < 20


def test_no_secret_or_password_left_in_data_dir(dockerd: ManagedDockerd, images: Images, tmp_path: Path) -> None:
    secret = "needle-secret-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:16]
    registry = images.htpasswd_registry
    dockerfile = f"FROM {images.htpasswd}\nRUN --mount=type=secret,id=n wc -c /run/secrets/n > /n.len\n"
    run = build(
        dockerd,
        tmp_path / "s",
        dockerfile,
        secrets={"n": secret},
        credentials={registry.host: images.credential(registry)},
    )
    assert (run.tree / "n.len").read_text().startswith(str(len(secret)))
    assert registry.password is not None
    needles = [secret.encode(), registry.password.encode()]
    assert scan_for(dockerd.layout.base_dir, needles) == []
    assert scan_for(tmp_path, needles) == []


def test_device_node_in_the_result_is_rejected_by_name(dockerd: ManagedDockerd, images: Images, tmp_path: Path) -> None:
    dockerfile = f"FROM {images.public}\nRUN mknod /opt-null c 1 3\n"
    run = build(dockerd, tmp_path / "dev", dockerfile)
    assert isinstance(run.error, BuildFailed), run.error
    assert run.error.phase is FailurePhase.BUILD_STEP
    assert "could not be unpacked" in run.error.message and "opt-null" in run.error.message


def test_identical_concurrent_builds_share_one_image_id_and_leave_no_image(
    dockerd: ManagedDockerd, images: Images, tmp_path: Path
) -> None:
    """Equal inputs, equal image ID (the key of Amber's Dockerfile base-disk cache); each build tags the image for
    itself, so one finishing first does not delete it under the other; ``want_tree`` False skips the export."""
    dockerfile = f"FROM {images.public}\nRUN echo same > /same\nENV MODE=concurrent\n"
    asked: list[str] = []

    async def main() -> list[DockerfileBuildResult]:
        async def emit(event: LogEvent) -> None:
            pass

        async def no_tree(image_id: str, config: object) -> bool:
            asked.append(image_id)
            return False

        async def one(index: int) -> DockerfileBuildResult:
            work = tmp_path / f"same{index}"
            return await build_dockerfile_rootfs(
                DockerfileBuildRequest(dockerfile=dockerfile), dockerd=dockerd, target_dir=work / "tree",
                staging_dir=work / "staging", emit=emit, cancel=asyncio.Event(),
                want_tree=no_tree if index == 2 else None,
            )  # fmt: skip

        results = list(await asyncio.gather(*(one(i) for i in range(2))))
        return [*results, await one(2)]

    first, second, skipped = asyncio.run(main())
    assert first.image_id == second.image_id == skipped.image_id == asked[0]
    assert first.image_id.startswith("sha256:") and first.tree_is_image and second.tree_is_image
    assert first.tree is not None and (first.tree / "same").read_text() == "same\n"
    assert skipped.tree is None and not (tmp_path / "same2" / "tree").exists()
    assert "MODE=concurrent" in skipped.image_config.env

    async def amber_images() -> list[object]:
        async with dockerd.client() as api:
            listed = (await api.get("/images/json", params={"all": "1"})).json()
        return [i for i in listed if any(t.startswith("amber-build/") for t in i.get("RepoTags") or [])]

    assert asyncio.run(amber_images()) == []


def test_concurrent_builds_keep_their_own_secrets(dockerd: ManagedDockerd, images: Images, tmp_path: Path) -> None:
    dockerfile = f"FROM {images.public}\nRUN --mount=type=secret,id=k cat /run/secrets/k | sha256sum > /k.sha\n"
    values = ["concurrent-one", "concurrent-two", "concurrent-three"]

    async def main() -> list[DockerfileBuildResult]:
        async def emit(event: LogEvent) -> None:
            pass

        async def one(index: int) -> DockerfileBuildResult:
            work = tmp_path / f"c{index}"
            return await build_dockerfile_rootfs(
                DockerfileBuildRequest(dockerfile=dockerfile),
                dockerd=dockerd,
                target_dir=work / "tree",
                staging_dir=work / "staging",
                emit=emit,
                cancel=asyncio.Event(),
                secrets={"k": values[index]},
            )

        return list(await asyncio.gather(*(one(i) for i in range(len(values)))))

    results = asyncio.run(main())
    for value, result in zip(values, results, strict=True):
        assert result.tree is not None
        assert (result.tree / "k.sha").read_text().split()[0] == hashlib.sha256(value.encode()).hexdigest()


def test_build_envs_reach_every_run_but_not_the_image(dockerd: ManagedDockerd, images: Images, tmp_path: Path) -> None:
    dockerfile = (
        f'FROM {images.public} AS one\nRUN echo "$MODE-$LEVEL" > /one\n'
        'FROM one\nARG LEVEL=from-dockerfile\nRUN echo "$MODE-$LEVEL" > /two\n'
    )
    run = build(
        dockerd, tmp_path / "e", dockerfile, build_envs={"MODE": "ci", "LEVEL": "env"}, build_args={"LEVEL": "arg"}
    )
    assert (run.tree / "one").read_text() == "ci-arg\n"  # build_args win over build_envs
    assert (run.tree / "two").read_text() == "ci-arg\n"
    assert run.result is not None and "MODE=ci" not in run.result.image_config.env
    assert not any(e.startswith("MODE=") for e in run.result.image_config.env)


@pytest.mark.parametrize("dockerfile", [
    "FROM {base}\nRUN touch /file\nWORKDIR /file/sub\n",
    "FROM {base}\nRUN touch /file\nCOPY a.txt /file/x\n",
    "FROM {base}\nCOPY a.txt /bin/sh/inside\n",
])
def test_failures_name_no_server_path(dockerd: ManagedDockerd, images: Images, tmp_path: Path, dockerfile: str) -> None:
    """Issue 12: BuildKit reports paths of its mounts and layers on the server (``…/dockerd/data/tmp/buildkit-mount…``,
    ``…/overlay2/…/merged/…``); users see the path inside the build's filesystem instead."""
    run = build(dockerd, tmp_path / "w", dockerfile.format(base=images.public), files=[ContextFile.text("a.txt", "a")])
    assert isinstance(run.error, BuildFailed), run.error
    shown = "\n".join([run.error.message, *run.messages()])
    for root in (dockerd.layout.base_dir.resolve(), dockerd.layout.exec_root, tmp_path.resolve()):
        assert str(root) not in shown
    assert "buildkit-mount" not in shown and "overlay2" not in shown
