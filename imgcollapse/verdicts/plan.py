"""Pre-registration: a study's plan (arms, seeds, horizon, claims, rules) is hashed into study.json before its first
chain runs; a plan changed once chains had data marks every verdict "re-analysed after the data"."""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
from collections.abc import Mapping
from typing import Any

PLAN_KEYS = ("seeds", "generation", "overrides", "arms", "claims", "rule")  # what a verdict's meaning rests on
# 2: the protocol by model kind (study.overrides_by_model), where a study has one, is part of the plan too. A plan
# registered under version 1 is hashed as it was registered (its study.json has no `keys`)
PLAN_KEYS_VERSION = 2


def plan_hash(study: dict[str, Any], common: list[str], keys: int = PLAN_KEYS_VERSION) -> str:
    """The hash of the plan (arms, seeds, horizon, claims, rules, the overrides every arm gets, the protocol by model
    kind): registered in study.json before the first chain runs, so that a report can tell a verdict planned before
    the data from one re-analysed after it. `keys`: the version of the plan's keys the record was registered under."""
    plan = {k: _spelling_free(k, study.get(k)) for k in PLAN_KEYS} | {"common_overrides": list(common)}
    if keys >= 2 and study.get("overrides_by_model"):  # absent when empty: such plans hash as under version 1
        plan["overrides_by_model"] = study["overrides_by_model"]
    return hashlib.sha256(json.dumps(plan, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan_keys(record: Mapping[str, Any]) -> int:
    """The version of the plan's keys a study.json registered its plan under (a new study: the current one)."""
    plan = record.get("plan")
    return int(plan.get("keys", 1)) if plan else PLAN_KEYS_VERSION


def _spelling_free(key: str, value: Any) -> Any:
    """A plan's part with each `combine` spelled one way (or/and), so that aliases (any/all) hash alike."""
    spelled = {"any": "or", "all": "and"}

    def rule(r: Any) -> Any:
        if isinstance(r, dict) and r.get("combine") in spelled:
            r["combine"] = spelled[r["combine"]]
        return r

    value = copy.deepcopy(value)
    if key == "rule":
        return rule(value)
    if key == "claims" and isinstance(value, dict):
        for claim in value.values():
            if isinstance(claim, dict):
                rule(claim)
                rule(claim.get("rule"))
                for test in claim.get("tests") or []:
                    if isinstance(test, dict):
                        rule(test.get("rule"))
    return value


def register_plan(previous: dict[str, Any], digest: str, any_data: bool) -> dict[str, Any]:
    """study.json's `plan`: the first registration (with whether any chain had a generation then) and every later
    change of the plan, each marked by whether data existed when it was made."""
    now = datetime.datetime.now().isoformat(timespec="seconds")
    plan = dict(previous.get("plan") or {})
    if not plan:
        return {"hash": digest, "registered": now, "before_data": not any_data, "changes": [],
                "keys": PLAN_KEYS_VERSION}
    changes = list(plan.get("changes", []))
    current = changes[-1]["hash"] if changes else plan["hash"]
    if digest != current:
        changes.append({"hash": digest, "time": now, "after_data": any_data})
    return {**plan, "changes": changes}


def plan_status(record: Mapping[str, Any]) -> tuple[bool, str]:
    """(whether the verdicts are as planned before the data, a line for the report) from study.json alone: the plan
    registered before any chain had a generation, and the plan judged now is that one (or changed before data)."""
    plan = record.get("plan")
    if not plan:
        return False, "no registered plan (a study dir from before 0.4): verdicts not pre-registered"
    digest = plan_hash(record.get("study") or {}, record.get("common_overrides") or [], plan_keys(record))
    if not plan.get("before_data"):
        return False, f"plan {plan['hash']} registered on {plan['registered']}, after chains had data: re-analysed " \
                      "after the data"
    changes = plan.get("changes") or []
    if any(c.get("after_data") for c in changes) or digest != (changes[-1]["hash"] if changes else plan["hash"]):
        return False, f"plan {plan['hash']} registered on {plan['registered']} before the data, then changed after " \
                      "chains ran: re-analysed after the data"
    return True, f"plan {digest} registered on {plan['registered']}, before any chain ran"
