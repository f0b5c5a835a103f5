"""The Argo CD health checks and actions (charts/argocd/resource_customizations/fmops.dev), run in real Lua 5.1.

Argo CD runs them in gopher-lua, a Lua 5.1, with only the base, table and (a safe subset of) os
libraries opened for customizations from argocd-cm (util/lua/lua.go, oslib_safe.go): `lua()` opens
the same, in the Lua 5.1 of the `lupa` wheel, and runs every case of every health_test.yaml and
actions/action_test.yaml, in Argo CD's own layout and format. The objects those cases read are the
ones the operator writes (tests/unit/argocd_fixtures.py made them, and the first test here fails when
they are stale); the last tests carry each action out on the fake cluster and reconcile again, so an
action is known to make the operator do what its name says.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import lupa
import yaml
from lupa import lua51

from tests.conftest import REPO
from tests.unit import argocd_fixtures as fx

HEALTH = ("Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown")  # gitops-engine's health codes
ACTIONS_DIR = fx.CUSTOMIZATIONS / "Rollout" / "actions"
SCRIPTS = sorted(fx.CUSTOMIZATIONS.rglob("*.lua"))

# Argo CD opens base, table, package and its safe os (time, date) for argocd-cm scripts; not string,
# math, io, debug or coroutine (and so no string methods either). `fixed` is the clock the tests run at.
SANDBOX = """
local fixed, hits, chunk = ...
local real_date, real_time, sethook, getinfo = os.date, os.time, debug.sethook, debug.getinfo
local safe_os = {
  time = function(t) if t == nil then return fixed end return real_time(t) end,
  date = function(format, t) return real_date(format or "%c", t or fixed) end,
}
string, math, io, debug, coroutine, python = nil, nil, nil, nil, nil, nil
for _, name in ipairs({"string", "math", "io", "debug", "coroutine"}) do package.loaded[name] = nil end
os, package.loaded.os = safe_os, safe_os
getmetatable("").__index = nil
if hits ~= nil then
  sethook(function(_, line) if getinfo(2, "S").source == chunk then hits[line] = true end end, "l")
end
"""


def lua(chunk: str = "", record: bool = False) -> tuple[Any, Any]:
    """A fresh Lua 5.1 state as Argo CD makes one per script run, and (with record) the table in which
    the numbers of the lines of `chunk` that run are noted."""
    runtime = lua51.LuaRuntime(register_eval=False, register_builtins=False)
    assert runtime.eval("_VERSION") == "Lua 5.1", runtime.eval("_VERSION")
    hits = runtime.table() if record else None
    runtime.execute(SANDBOX, int(fx.ACTION_TIME.timestamp()), hits, chunk)
    return runtime, hits


def run(script: Path, obj: dict[str, Any], lines: set[int] | None = None) -> Any:
    """Run a script with the global `obj`, as Argo CD does; its result as Python (empty tables as Argo CD
    reads them). The numbers of the lines that ran are added to `lines`, if given."""
    chunk = "=" + str(script.relative_to(fx.CUSTOMIZATIONS))
    runtime, hits = lua(chunk, record=lines is not None)
    fn, err = runtime.eval("function(text, chunk) local fn, err = loadstring(text, chunk); return fn, err end")(script.read_text(), chunk)
    assert fn is not None, f"{script}: {err}"
    runtime.globals().obj = runtime.table_from(obj, recursive=True)
    result = to_python(fn(), obj)
    if lines is not None:
        lines |= {int(k) for k in hits.keys()}
    return result


def to_python(value: Any, like: Any = None) -> Any:
    """A Lua value as Argo CD decodes it (gopher-json), with its clean-up of empty tables: an empty
    table is an empty object where the input had one (cleanReturnedObj), else an empty list."""
    if lua51.lua_type(value) != "table":
        return value
    keys = list(value.keys())
    if not keys:
        return {} if isinstance(like, dict) else []
    if all(isinstance(k, int) for k in keys) and sorted(keys) == list(range(1, len(keys) + 1)):
        items = like if isinstance(like, list) else []
        return [to_python(value[i], items[i - 1] if i <= len(items) else None) for i in range(1, len(keys) + 1)]
    fields = like if isinstance(like, dict) else {}
    return {str(k): to_python(value[k], fields.get(k)) for k in keys}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def health_cases() -> Iterator[Any]:
    for spec in sorted(fx.CUSTOMIZATIONS.glob("*/health_test.yaml")):
        for case in load(spec)["tests"]:
            yield pytest.param(spec.parent, case, id=f"{spec.parent.name}/{Path(case['inputPath']).stem}")


ACTION_TESTS = load(ACTIONS_DIR / "action_test.yaml")


# ---------------------------------------------------------------- the testdata is what the operator writes
def test_testdata_is_what_the_operator_writes_now() -> None:
    diffs = fx.differences()
    assert not diffs, (f"{len(diffs)} file(s) under charts/argocd differ from what the operator's code makes now; "
                       f"if the change is meant, refresh them with `{fx.COMMAND}` and review the diff:\n" + "".join(diffs)[:6000])


def test_the_interpreter_is_lua_5_1_like_argo_cds() -> None:
    runtime, _ = lua()
    print(f"Lua interpreter: {runtime.eval('_VERSION')} (lupa {lupa.__version__}, lupa.lua51)")
    assert runtime.eval("_VERSION") == "Lua 5.1"
    assert runtime.eval("string") is None and runtime.eval("math") is None, "the sandbox opens what Argo CD opens, no more"
    assert runtime.eval("table.getn({1, 2})") == 2 and runtime.eval('require("os").date("!%Y", 0)') == "1970"
    for refused in ('("x"):upper()', 'string.len("x")', "math.floor(1.5)", 'os.getenv("HOME")', 'io.open("/etc/hostname")'):
        with pytest.raises(lua51.LuaError):
            runtime.execute(f"return {refused}")


# ---------------------------------------------------------------- health
@pytest.mark.parametrize(("folder", "case"), list(health_cases()))
def test_health(folder: Path, case: dict[str, Any]) -> None:
    got = run(folder / "health.lua", load(folder / case["inputPath"]))
    assert got["status"] in HEALTH
    assert got == {"status": case["healthStatus"]["status"], "message": case["healthStatus"]["message"]}


def test_every_health_a_script_can_give_is_in_a_case() -> None:
    """Each line of a health.lua that sets hs.status runs for at least one case: no untested branch.
    Exempt: the Unknown fallback for a status this operator does not write. (FoundationModel and
    TaskAdapter share one script: the cases of both count.)"""
    folders = sorted(p.parent for p in fx.CUSTOMIZATIONS.glob("*/health.lua"))
    for text in {(f / "health.lua").read_text() for f in folders}:
        users = [f for f in folders if (f / "health.lua").read_text() == text]
        setters = {n for n, line in enumerate(text.splitlines(), 1) if re.match(r'\s*hs\.status = (?!"Unknown")', line)}
        ran: set[int] = set()
        for folder in users:
            for case in load(folder / "health_test.yaml")["tests"]:
                run(folder / "health.lua", load(folder / case["inputPath"]), ran)
        missing = sorted(setters - ran)
        assert not missing, f"{users[0].name}/health.lua: lines {missing} set a health that no case of {[u.name for u in users]} reaches"


def test_one_script_serves_foundation_models_and_task_adapters() -> None:
    fm, ta = (fx.CUSTOMIZATIONS / k / "health.lua" for k in ("FoundationModel", "TaskAdapter"))
    assert fm.read_text() == ta.read_text(), "FoundationModel/health.lua and TaskAdapter/health.lua must stay the same script"


def test_the_scripts_use_only_what_argo_cd_opens() -> None:
    """Only base, table and os (time, date): a string or math call would fail in Argo CD on a branch no case runs."""
    for script in SCRIPTS:
        text = "\n".join(line.split("--")[0] for line in script.read_text().splitlines())
        found = re.findall(r"\b(?:string|math|io|debug|coroutine)\s*\.|\bos\.(?!date\b|time\b)\w+|:\s*(?:sub|find|match|gsub|format|len|lower|upper)\s*\(", text)
        assert not found, f"{script.relative_to(REPO)} uses {found}, which Argo CD does not open for argocd-cm scripts"


# ---------------------------------------------------------------- actions
@pytest.mark.parametrize("case", ACTION_TESTS["discoveryTests"], ids=lambda c: Path(c["inputPath"]).stem)
def test_discovery(case: dict[str, Any]) -> None:
    got = run(ACTIONS_DIR / "discovery.lua", load(ACTIONS_DIR / case["inputPath"]))
    assert {name: bool(a.get("disabled", False)) for name, a in got.items()} == {a["name"]: a["disabled"] for a in case["result"]}


def test_every_discovered_action_has_a_definition() -> None:
    defined = {p.parent.name for p in ACTIONS_DIR.glob("*/action.lua")}
    assert defined == set(fx.ACTIONS)
    for case in ACTION_TESTS["discoveryTests"]:
        assert {a["name"] for a in case["result"]} == defined


@pytest.mark.parametrize("case", ACTION_TESTS["actionTests"], ids=lambda c: f"{c['action']}-{Path(c['inputPath']).stem}")
def test_action(case: dict[str, Any]) -> None:
    before = load(ACTIONS_DIR / case["inputPath"])
    after = run(ACTIONS_DIR / case["action"] / "action.lua", before)
    assert after == load(ACTIONS_DIR / case["expectedOutputPath"])
    assert after["status"] == before["status"], "an action never writes status: the operator owns it"


@pytest.mark.parametrize("action", sorted(fx.REQUESTS))
def test_a_request_is_new_each_time_even_within_one_second(action: str) -> None:
    """The operator acts on a value once: the action never sets the value last acted on, nor the one set now."""
    key, field = fx.REQUESTS[action], f"last{action.capitalize()}Request"
    script = ACTIONS_DIR / action / "action.lua"
    obj = {"metadata": {"name": "recommender"}, "spec": {}, "status": {}}
    values = []
    for _ in range(3):  # each request acted on before the next, all in the same second
        obj = run(script, obj)
        value = obj["metadata"]["annotations"][key]
        assert value != obj["status"].get(field), f"{action} set {value}, the value the operator acted on last"
        values.append(value)
        obj["status"][field] = value
    assert values == [fx.REQUEST, f"{fx.REQUEST}-2", fx.REQUEST]
    waiting = run(script, {"metadata": {"annotations": {key: fx.REQUEST}}, "status": {field: "older"}})
    assert waiting["metadata"]["annotations"][key] == f"{fx.REQUEST}-2", "a request not acted on yet is replaced by a new one"


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch from old to new (Argo CD patches the live object with this after an action)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch = {k: merge_patch(old.get(k), v) for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new})
    return patch


def apply_patch(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            apply_patch(target[key], value)
        else:
            target[key] = value


@pytest.mark.parametrize("case", ACTION_TESTS["actionTests"], ids=lambda c: f"{c['action']}-{Path(c['inputPath']).stem}")
def test_the_operator_does_what_the_action_asks(case: dict[str, Any]) -> None:
    """Carry the action out on the cluster the testdata came from, as Argo CD does (a merge patch of what
    the script changed), reconcile once more, and see the operator act on it."""
    action, name = case["action"], Path(case["inputPath"]).stem
    cluster = fx.make().worlds[f"Rollout/{name}"].fork()
    live = cluster.object(fx.RO, "recommender")
    patch = merge_patch(live, run(ACTIONS_DIR / action / "action.lua", live))
    assert set(patch) <= {"metadata", "spec"} and "status" not in patch
    cluster.edit(fx.RO, "recommender", lambda o: apply_patch(o, patch))
    seen = len(cluster.events)
    cluster.tick((fx.RO, "recommender"))
    before, after = live.get("status") or {}, cluster.status(fx.RO, "recommender")
    reasons = [reason for _, reason, _ in cluster.events[seen:]]
    assert not [r for r in reasons if r.endswith("Ignored")], f"the operator ignored the {action} request: {cluster.events[seen:]}"
    progressing: dict[str, Any] = next((c for c in after.get("conditions") or [] if c["type"] == "Progressing"), {})
    if action == "promote":
        assert after["lastPromoteRequest"] == fx.REQUEST and after["currentStepIndex"] > before["currentStepIndex"], after["message"]
    elif action == "abort":
        assert after["phase"] == "RolledBack" and f"fmops.dev/abort={fx.REQUEST}" in after["rollbackReason"]
    elif action == "retry":
        assert after["revision"] == before["revision"] + 1 and after["phase"] not in ("RolledBack", "Failed"), after["message"]
    elif action == "pause" and before.get("revision"):
        assert (after["phase"], progressing["reason"]) == ("Paused", "PausedBySpec")
    elif action == "pause":  # nothing is served yet: the first revision starts paused once its references resolve
        assert after["phase"] == before["phase"] and cluster.object(fx.RO, "recommender")["spec"]["paused"] is True
    else:
        assert action == "resume" and after["phase"] != "Paused" and progressing["reason"] != "PausedBySpec", after["message"]


# ---------------------------------------------------------------- installing
def test_argocd_cm_carries_every_script_under_argo_cds_keys() -> None:
    data = yaml.safe_load(fx.ARGOCD_CM.read_text())["data"]
    for kind in fx.KINDS:
        assert data[f"resource.customizations.health.fmops.dev_{kind}"] == (fx.CUSTOMIZATIONS / kind / "health.lua").read_text()
    actions = yaml.safe_load(data["resource.customizations.actions.fmops.dev_Rollout"])
    assert actions["discovery.lua"] == (ACTIONS_DIR / "discovery.lua").read_text()
    assert {d["name"]: d["action.lua"] for d in actions["definitions"]} == {a: (ACTIONS_DIR / a / "action.lua").read_text() for a in fx.ACTIONS}
