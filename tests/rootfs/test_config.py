"""Image config parsing and User resolution (R35, R38)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amber.builds.planning.runtime import image_defaults, map_healthcheck
from amber.oci.config import ImageConfig
from amber.oci.errors import ImageConfigError
from amber.rootfs.users import ResolvedUser, UserSpec, parse_user_spec, resolve_user, resolve_user_in_tree
from tests.support.busybox import GROUP, PASSWD, make_busybox_tree


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ResolvedUser(0, 0, "root", "/root")),
        ("app", ResolvedUser(1000, 1000, "app", "/home/app", (50,))),  # app is a member of staff (50)
        ("1000", ResolvedUser(1000, 1000, "app", "/home/app", (50,))),
        ("app:staff", ResolvedUser(1000, 50, "app", "/home/app")),
        ("app:4242", ResolvedUser(1000, 4242, "app", "/home/app", (50,))),
        ("1000:staff", ResolvedUser(1000, 50, "app", "/home/app")),
        ("1000:4242", ResolvedUser(1000, 4242, "app", "/home/app", (50,))),
        ("4321", ResolvedUser(4321, 0, None, "/")),  # numeric uid without passwd entry: gid 0, like Docker
        ("4321:4321", ResolvedUser(4321, 4321, None, "/")),
        ("nobody", ResolvedUser(65534, 65534, "nobody", "/nonexistent")),
    ],
)
def test_user_forms(text: str, expected: ResolvedUser) -> None:
    assert resolve_user(text, PASSWD, GROUP) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ghost", "no user named 'ghost'"),
        ("app:ghosts", "no group named 'ghosts'"),
        ("1000:ghosts", "no group named 'ghosts'"),
        ("app:", "group part is empty"),
        (":staff", "user part is empty"),
        ("a:b:c", "expected user, uid"),
        ("99999999999", "out of range"),
    ],
)
def test_user_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ImageConfigError, match=message):
        resolve_user(text, PASSWD, GROUP)


@given(st.integers(0, 2**32 - 2), st.one_of(st.none(), st.integers(0, 2**32 - 2)))
def test_numeric_users_always_resolve(uid: int, gid: int | None) -> None:
    text = f"{uid}" if gid is None else f"{uid}:{gid}"
    assert parse_user_spec(text) == UserSpec(uid, gid)
    resolved = resolve_user(text, "", "")
    assert (resolved.uid, resolved.gid) == (uid, gid if gid is not None else 0)


def test_user_resolution_reads_the_tree_and_never_follows_links_out(tmp_path: Path) -> None:
    tree = make_busybox_tree(tmp_path / "tree")
    assert resolve_user_in_tree("app:staff", tree).gid == 50
    outside = tmp_path / "host-passwd"
    outside.write_text("evil:x:0:0::/:/bin/sh\n")
    (tree / "etc" / "passwd").unlink()
    (tree / "etc" / "passwd").symlink_to(str(outside))  # resolved inside the tree: there is no such file
    with pytest.raises(ImageConfigError, match="no user named 'evil'"):
        resolve_user_in_tree("evil", tree)


def test_config_fields_and_metadata() -> None:
    doc = {
        "architecture": "amd64", "os": "linux",
        "config": {
            "User": "app", "Env": ["PATH=/bin", "A=1", "A=2"], "WorkingDir": "/srv", "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo hi"], "ExposedPorts": {"8080/tcp": {}, "53/udp": {}}, "Volumes": {"/data": {}},
            "Labels": {"org.example": "x"}, "StopSignal": "SIGTERM",
            "Healthcheck": {"Test": ["CMD-SHELL", "curl -f localhost:8080"], "Interval": 2_000_000_000,
                            "Timeout": 1_000_000_000, "StartPeriod": 5_000_000_000, "Retries": 3},
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]},
    }
    config = ImageConfig.from_json(json.dumps(doc))
    assert config.user == "app" and config.working_dir == "/srv"
    assert config.env_map == {"PATH": "/bin", "A": "2"}
    assert config.entrypoint == ("/bin/sh", "-c") and config.cmd == ("echo hi",)
    assert config.oci_metadata() == {
        "labels": {"org.example": "x"},
        "exposed_ports": ["53/udp", "8080/tcp"],
        "volumes": ["/data"],
        "healthcheck": {
            "test": ["CMD-SHELL", "curl -f localhost:8080"], "interval_ns": 2_000_000_000,
            "timeout_ns": 1_000_000_000, "start_period_ns": 5_000_000_000, "retries": 3,
        },
    }
    # The probe a healthcheck becomes is the build's one mapping (R38 mapped_readiness), not the config's.
    mapped = map_healthcheck(image_defaults(config).healthcheck)
    assert mapped is not None and mapped.to_json() == {
        "kind": "command", "command": "curl -f localhost:8080", "timeout_secs": 30, "interval_ms": 2000,
        "startup_grace_secs": 0,
    }


def test_healthcheck_none_maps_to_nothing() -> None:
    config = ImageConfig.from_json(json.dumps({"config": {"Healthcheck": {"Test": ["NONE"]}}}))
    assert config.healthcheck is not None and config.healthcheck.test == ("NONE",)
    assert map_healthcheck(image_defaults(config).healthcheck) is None


@pytest.mark.parametrize(
    ("doc", "field"),
    [({"config": {"User": 5}}, "config.User"), ({"config": {"Env": "x=1"}}, None),
     ({"config": {"Cmd": [1]}}, "config.Cmd"), ({"config": {"Labels": []}}, "config.Labels"),
     ({"config": {"Healthcheck": {"Retries": "3"}}}, "config.Healthcheck.Retries")],
)
def test_malformed_config_names_the_field(doc: dict[str, object], field: str | None) -> None:
    if field is None:
        assert ImageConfig.from_json(json.dumps(doc)).env == ("x=1",)
        return
    with pytest.raises(ImageConfigError, match=field.replace(".", r"\.")):
        ImageConfig.from_json(json.dumps(doc))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["config", "User", "Env", "Cmd", "Entrypoint", "ExposedPorts", "Volumes", "Labels",
                         "Healthcheck", "Test", "Retries", "rootfs", "diff_ids", "architecture", "os"]),
        children, max_size=5),
    max_leaves=15,
)


@given(_json)
def test_arbitrary_config_json_parses_or_raises_config_errors(doc: object) -> None:
    try:
        config = ImageConfig.from_json(json.dumps(doc))
    except ImageConfigError as exc:
        assert exc.message
        return
    config.oci_metadata()
    assert isinstance(config.env_map, dict)
