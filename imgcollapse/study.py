"""`python -m imgcollapse.study study=NAME [overrides]` (or `imgcollapse-study`): arms × seeds of chains, answered.

A study (conf/study/NAME.yaml) names its arms (each a list of overrides on top of the run's config), its seeds and
generations, and its claims (the tests and the verdict rule: imgcollapse/verdicts/). Every arm × seed is an
ordinary chain in an ordinary run dir, `<study dir>/<arm>/seed_<s>/`, under one deterministic study dir
(`outputs/study/NAME[,overrides]`), so rerunning the same command resumes every chain and skips finished ones.

Chains run through Hydra's launcher (`hydra/sweeper=imgcollapse_study`: the planned jobs, not a grid): joblib
locally (`study.jobs` chains at once, the cores divided among them), submitit/Slurm on a cluster
(`hydra/launcher=slurm hydra.launcher.partition=...`). Arms whose generation 0 is the same config
(resume.generation0_signature) train it once per seed: stage 1 trains each group's first arm to generation 0, stage
2 runs every chain, the others adopting that generation 0 (`chain.share_gen0`, copied bit for bit after checks).
Then study.csv, claims.json and study.html are written (`python -m imgcollapse.report STUDY_DIR` rebuilds them).

Overrides: `study=NAME`, `study.KEY=VALUE` set the study; `hydra/launcher=...`, `hydra.launcher.KEY=...` choose how
chains run; anything else applies to every arm (`model=vae`, `dataset=mnist`, `debug=smoke`). `--plan` composes and
checks every arm and claim (horizons, home families, shared generations 0), prints the chains and runs nothing.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from imgcollapse._version import version_line
from imgcollapse.cli import describe_config_error
from imgcollapse.config import CONF_DIR, SCHEMAS, build, compose, model_kind, validate
from imgcollapse.errors import (
    EXIT_DONE,
    EXIT_INTERRUPTED,
    EXIT_USER,
    EXIT_WRITE,
    ConfigError,
    UserError,
    WriteFailed,
    exit_codes_text,
)
from imgcollapse.progress import StudyWatch
from imgcollapse.report.study import build_study_report
from imgcollapse.resume import fit0_signature, generation0_signature
from imgcollapse.store import FAILED, RunStore, atomic_write_text, read_failed, to_json
from imgcollapse.threads import available_cores
from imgcollapse.verdicts.plan import plan_hash, plan_keys, register_plan
from imgcollapse.verdicts.rules import check_claims, check_homes

log = logging.getLogger("imgcollapse.study")

STUDY_FILE = "study.json"  # in the study dir: the plan (arms, seeds, chains, shared generations 0) and its runs
DRAW = ("first_seed", "all", "none")
LAUNCHERS = ("basic", "joblib", "slurm", "submitit_local", "submitit_slurm")
ALIASES = {"study=null": "study=null_aa"}  # Hydra reads a bare `null` as None: the A/A study's file is null_aa.yaml
ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass
class StudyConfig:
    """`study.*` (conf/study/*.yaml): what runs; `claims` and `rule` are read by imgcollapse/verdicts/."""

    name: str = MISSING  # the study's name: its dir, outputs/study/<name>[,<overrides>]
    description: str = ""  # one paragraph for the report's top
    seeds: Any = 3  # an int n (seeds 0..n-1) or a list of seeds
    generation: Any = MISSING  # the last generation of every arm that does not set its own: an int, or one per
    # model kind ({ddpm: 2, vae: 2, gmm: 5}: cheap models afford longer chains in the same budget)
    overrides: list[str] = field(default_factory=list)  # applied to every arm, before the arm's own
    overrides_by_model: dict[str, Any] = field(default_factory=dict)  # {ddpm: [...]}: applied to every arm after
    # `overrides`, before the arm's own, when the study's model is that kind (a protocol only some kinds have, such
    # as fine-tuning: model.init=previous is refused by the GMM)
    arms: dict[str, Any] = MISSING  # {arm: [overrides]} or {arm: {overrides: [...], generation: G, label: "...",
    # by_model: {gmm: [overrides used instead when the study's model is a gmm]}}; an arm's generation may be per
    # model kind too ({gmm: 10, vae: 10, ddpm: 2}; a kind it does not name: the study's)
    claims: dict[str, Any] = field(default_factory=dict)  # {claim: {statement, source, tests, rule}}
    rule: dict[str, Any] = field(default_factory=dict)  # the default verdict rule (verdicts/rules.py: RULE)
    launcher: str = "joblib"  # LAUNCHERS: how chains run (the command line's hydra/launcher= wins)
    jobs: int | None = None  # joblib: chains at once (None: one per core); torch threads = cores // jobs
    threads: int | None = None  # torch threads of every chain (None: cores // jobs locally; a cluster job's cores)
    share_gen0: bool = True  # train each shared generation 0 once per seed (false: every chain its own)
    draw: str = "first_seed"  # chains that draw their own report: first_seed (the study shows its strips) | all |
    # none (report.draw=false; `python -m imgcollapse.report RUN_DIR` draws one later). ~2-3 s a chain
    dir: str | None = None  # the study dir (None: outputs/study/<name>[,<overrides>])
    null_study: bool = False  # no claim is true by design (A/A): the report states the false-decision rate


@dataclass
class StudyRoot:
    """conf/study_config.yaml's schema: the chosen study under `study`, typed (unknown keys fail at compose)."""

    study: StudyConfig = field(default_factory=StudyConfig)


def register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="study_schema", node=StudyRoot)


@dataclass
class Arm:
    name: str
    overrides: list[str]
    generation: int
    label: str
    seed_offset: int = 0  # the chain of seed s runs with seed s + offset (pairing still by s): an A/A arm's own streams


@dataclass
class Chain:
    """One arm × seed: its run dir (relative to the study dir), overrides, and the chain whose generation 0 it
    adopts (None: it trains its own)."""

    arm: str
    seed: int
    generation: int
    overrides: list[str]
    run_dir: str
    signature: str
    shares_with: str | None = None
    depth: int = 0  # chains between this one and the chain that trains its generation 0 (0: it trains its own)


def load_study(overrides: list[str]) -> tuple[StudyConfig, dict[str, Any]]:
    """The study `study=NAME study.KEY=VALUE ...` composes (conf/study_config.yaml), typed and checked."""
    from hydra import compose, initialize_config_dir

    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="study_config", overrides=overrides)
    schema = OmegaConf.structured(StudyConfig)
    merged: DictConfig = OmegaConf.merge(schema, cfg.study)
    study: StudyConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    raw = OmegaConf.to_container(merged, resolve=True)
    check_study(study)
    return study, raw  # type: ignore[return-value]


def seed_list(seeds: Any) -> list[int]:
    """`study.seeds`: n (seeds 0..n-1) or a list of distinct seeds."""
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ConfigError("study.seeds", seeds, "a number of seeds >= 1 or a list of seeds")
        return list(range(seeds))
    if isinstance(seeds, (list, tuple)) and seeds and all(isinstance(s, int) and s >= 0 for s in seeds) \
            and len(set(seeds)) == len(seeds):
        return list(seeds)
    raise ConfigError("study.seeds", seeds, "a number of seeds >= 1 or a list of distinct seeds >= 0")


def arms_of(study: StudyConfig, model: str | None = None) -> list[Arm]:
    """The study's arms, in the config's order; `model` (the study's model kind) picks an arm's `by_model`
    overrides where it has them (a key one model family lacks, such as model.budget for the GMM)."""
    default = study.generation
    if isinstance(default, dict):
        if model is None:  # checking the study's keys before the model is known: any of its values
            default = next(iter(default.values()), None)
        elif model not in default:
            raise ConfigError("study.generation", dict(default), f"an int, or a mapping with a value for {model}")
        else:
            default = default[model]
    protocol = list(study.overrides_by_model.get(model) or []) if model is not None else []
    out = []
    for name, spec in study.arms.items():
        if not ARM_NAME.fullmatch(name):
            raise ConfigError(f"study.arms.{name}", name, "an arm name of letters, digits, _ and - (it is a dir)")
        if isinstance(spec, dict):
            unknown = set(spec) - {"overrides", "generation", "label", "by_model", "seed_offset"}
            if unknown:
                raise ConfigError(f"study.arms.{name}", sorted(unknown),
                                  "keys among overrides, generation, label, by_model, seed_offset")
            overrides, generation = spec.get("overrides") or [], spec.get("generation", default)
            if isinstance(generation, dict):  # the arm's own horizon by model kind; the study's where it has none
                generation = next(iter(generation.values()), None) if model is None else generation.get(model, default)
            if model is not None and model in (spec.get("by_model") or {}):
                overrides = spec["by_model"][model]
            label = spec.get("label") or name
            offset = spec.get("seed_offset", 0)
            if not (isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0):
                raise ConfigError(f"study.arms.{name}.seed_offset", offset, "an integer >= 0 added to every seed")
        else:
            overrides, generation, label, offset = spec or [], default, name, 0
        if not (isinstance(overrides, list) and all(isinstance(o, str) and "=" in o for o in overrides)):
            raise ConfigError(f"study.arms.{name}", overrides, "a list of overrides such as regime=accumulate")
        if not isinstance(generation, int) or generation < 0:
            raise ConfigError(f"study.arms.{name}.generation", generation, "a generation >= 0")
        out.append(Arm(name, [*protocol, *overrides], generation, label, offset))
    return out


def horizon_kinds(study: StudyConfig) -> list[str | None]:
    """The model kinds the study's horizons name (study.generation's, else its arms'); [None] where none does."""
    if isinstance(study.generation, dict):
        return list(study.generation)
    named = [k for spec in study.arms.values() if isinstance(spec, dict) and isinstance(spec.get("generation"), dict)
             for k in spec["generation"]]
    return list(dict.fromkeys(named)) or [None]


def check_study(study: StudyConfig) -> None:
    """The study's own keys and its claims' arms, at every horizon the study names (ConfigError naming the key)."""
    seed_list(study.seeds)
    if not study.arms:
        raise ConfigError("study.arms", study.arms, "at least one arm: {name: [overrides]}")
    for name, spec in study.arms.items():
        kinds = set((spec.get("by_model") or {}) if isinstance(spec, dict) else {})
        if unknown := kinds - set(SCHEMAS["model"]):
            raise ConfigError(f"study.arms.{name}.by_model", sorted(unknown),
                              f"model kinds among {sorted(SCHEMAS['model'])}")
        horizon = spec.get("generation") if isinstance(spec, dict) else None
        if isinstance(horizon, dict) and (unknown := set(horizon) - set(SCHEMAS["model"])):
            raise ConfigError(f"study.arms.{name}.generation", sorted(unknown),
                              f"model kinds among {sorted(SCHEMAS['model'])}")
    if unknown := set(study.overrides_by_model) - set(SCHEMAS["model"]):
        raise ConfigError("study.overrides_by_model", sorted(unknown), f"model kinds among {sorted(SCHEMAS['model'])}")
    for kind, extra in study.overrides_by_model.items():
        if not (isinstance(extra, list) and all(isinstance(o, str) and "=" in o for o in extra)):
            raise ConfigError(f"study.overrides_by_model.{kind}", extra, "a list of overrides such as model.init=base")
    if isinstance(study.generation, dict) and (unknown := set(study.generation) - set(SCHEMAS["model"])):
        raise ConfigError("study.generation", sorted(unknown), f"model kinds among {sorted(SCHEMAS['model'])}")
    if study.threads is not None and study.threads < 1:
        raise ConfigError("study.threads", study.threads, "null or an integer >= 1")
    if study.launcher not in LAUNCHERS:
        raise ConfigError("study.launcher", study.launcher, f"one of {list(LAUNCHERS)}")
    if study.draw not in DRAW:
        raise ConfigError("study.draw", study.draw, f"one of {list(DRAW)}")
    if study.jobs is not None and study.jobs < 1:
        raise ConfigError("study.jobs", study.jobs, "null (one chain per core) or an integer >= 1")
    for kind in horizon_kinds(study):  # an arm's horizon may differ by model: the claims must hold at each
        check_claims(study.claims, study.rule, {a.name: a.generation for a in arms_of(study, kind)})


def study_dir(study: StudyConfig, common: list[str]) -> Path:
    """Where the study lives: `study.dir`, else outputs/study/<name>[,<overrides in order>] (the same command
    always maps to the same dir, so rerunning it resumes)."""
    if study.dir:
        return Path(study.dir)
    name = ",".join([study.name, *(o.replace("/", "-") for o in common)])
    safe = re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)[:120]
    if safe != name:  # characters a path or Hydra would read otherwise (${...}, quotes, spaces), or too long
        safe += "_" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return Path("outputs") / "study" / safe


def signature_key(resolved: dict[str, Any], pool_size: int | None, fit: bool = False) -> str:
    """A short hash of the generation-0 signature (`fit`: of its fit's): chains with equal keys can share generation
    0 (its model)."""
    signature = (fit0_signature if fit else generation0_signature)(resolved, pool_size)
    return hashlib.sha256(json.dumps(signature, sort_keys=True, default=str).encode()).hexdigest()[:16]


def study_model(study: StudyConfig, common: list[str]) -> str:
    """The model kind every arm starts from (ddpm, vae, gmm): the config of the study's and the command line's
    overrides."""
    return model_kind(validate(compose(*study.overrides, *common)).model)


def families_in_turn(config: Any) -> tuple[list[str], list[str]]:
    """(the families that train an arm's generations in turn, generation g by the g % len-th; its population's
    member column suffixes, [] for none) from its validated config."""
    if config.chain.population is not None:
        names = list(config.chain.population)
        # Population.labels: a family that appears twice is numbered
        return ["population"], [n if names.count(n) == 1 else f"{n}{i}" for i, n in enumerate(names)]
    return list(config.chain.models or [model_kind(config.model)]), []


def plan(study: StudyConfig, common: list[str], threads: int | None) -> list[Chain]:
    """Every arm × seed as a chain, each arm's overrides composed and checked once (a seed changes no other key);
    the claims checked against the arms' horizons and families (a test reads an arm only at generations its home
    family trained); the first chain of each generation-0 signature (per seed) trains it, the others adopt it."""
    chains, leaders, fitters, pools = [], {}, {}, {}
    model = study_model(study, common)
    arms = arms_of(study, model)
    seeds = seed_list(study.seeds)
    resolved_by_arm, turns, members = {}, {}, {}
    for arm in arms:
        try:
            cfg = compose(*study.overrides, *arm.overrides, *common, f"seed={seeds[0]}")
            config = validate(cfg)
        except UserError as e:
            raise UserError(f"arm {arm.name}: {e}") from e
        except Exception as e:  # Hydra's composition errors: an unknown key or group
            if type(e).__module__.startswith(("hydra", "omegaconf")):
                raise UserError(f"arm {arm.name}: {describe_config_error(e)}") from e
            raise
        turns[arm.name], members[arm.name] = families_in_turn(config)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        data_key = json.dumps(resolved["dataset"], sort_keys=True, default=str)  # type: ignore[index]
        if data_key not in pools:  # the pool's size sizes a budget=epochs fit (built once per dataset config)
            pools[data_key] = len(build(config.dataset).train)
        resolved_by_arm[arm.name] = (resolved, pools[data_key])
    generations = {a.name: a.generation for a in arms}
    check_claims(study.claims, study.rule, generations)  # at this model's horizons
    check_homes(study.claims, generations, turns, members, model)
    for seed in seeds:
        for arm in arms:
            own_seed = seed + arm.seed_offset
            overrides = [*study.overrides, *arm.overrides, *common, f"seed={own_seed}", f"generation={arm.generation}"]
            if threads is not None:
                overrides.append(f"threads={threads}")
            if study.draw == "none" or (study.draw == "first_seed" and seed != seeds[0]):
                overrides.append("report.draw=false")  # not part of a chain's identity (resume.IGNORED)
            resolved, pool = resolved_by_arm[arm.name]
            key = signature_key({**resolved, "seed": own_seed}, pool)  # type: ignore[arg-type]
            fit_key = signature_key({**resolved, "seed": own_seed}, pool, fit=True)  # type: ignore[arg-type]
            chain = Chain(arm.name, seed, arm.generation, overrides, f"{arm.name}/seed_{seed}", key)
            source = (leaders.get(key) or fitters.get(fit_key)) if study.share_gen0 else None
            if source is not None:  # the same files (copied), or the same model (curated and scored here)
                chain.shares_with, chain.depth = source.run_dir, source.depth + 1
            leaders.setdefault(key, chain)
            if source is None:
                fitters.setdefault(fit_key, chain)
            chains.append(chain)
    return chains


def quoted(path: Path) -> str:
    """A path as a quoted Hydra override value: a study dir's name holds `=` and `,` (model=vae,seed=...)."""
    return "'" + str(path).replace("'", "\\'").replace("${", "\\${") + "'"


def _job(chain: Chain, root: Path, generation: int | None = None) -> list[str]:
    job = [*chain.overrides, f"hydra.sweep.subdir={chain.run_dir}"]
    if generation is not None:
        job = [o for o in job if not o.startswith("generation=")] + [f"generation={generation}"]
    if chain.shares_with is not None:
        job.append(f"chain.share_gen0={quoted((root / chain.shares_with).resolve())}")
    return job


def _launch_order(chain: Chain) -> tuple:
    """Chains others adopt from before the chains that adopt (an adopting chain may wait for its source, which has
    then started: no deadlock), then the longest first, so
    that no core idles at the end: more generations, then compute growing with the pool (accumulate, epochs)."""
    grows = sum(("regime=accumulate" in o and "subsample" not in o) or o == "model.budget=epochs"
                for o in chain.overrides)
    return (chain.depth, -chain.generation, -grows)


def _launch(jobs: list[list[str]], root: Path, launcher: list[str], stage: str) -> int:
    """Run `jobs` as one Hydra multirun of imgcollapse.run through the study sweeper; the exit status."""
    if not jobs:
        return 0
    jobs_file = root / f".jobs_{''.join(stage.split()[:2]).strip('(')}.json"  # .jobs_chains.json, .jobs_stage1.json
    atomic_write_text(jobs_file, json.dumps(jobs, indent=1))
    command = [sys.executable, "-m", "imgcollapse.run", "-m", "hydra/sweeper=imgcollapse_study",
               f"hydra.sweeper.jobs_file={quoted(jobs_file.resolve())}", f"hydra.sweep.dir={quoted(root.resolve())}",
               "~hydra.callbacks.sweep_report", *launcher]
    log.info("%s: %d chain(s)", stage, len(jobs))
    return subprocess.run(command, check=False).returncode


def _threads_and_launcher(study: StudyConfig, launcher_args: list[str], num_chains: int) -> tuple[int | None,
                                                                                                   list[str]]:
    """(torch threads every chain runs with, the launcher's overrides). One thread count for every chain, so an
    adopted generation 0 was made under the numeric settings of the chain adopting it."""
    chosen = next((a.split("=", 1)[1] for a in launcher_args if a.startswith("hydra/launcher=")), study.launcher)
    args = [a for a in launcher_args if not a.startswith("hydra/launcher=")]
    if chosen == "basic":  # one chain at a time: every core
        return study.threads or available_cores(), ["hydra/launcher=basic", *args]
    if chosen == "joblib":
        cores = available_cores()
        given = next((a.split("=", 1)[1] for a in args if a.startswith("hydra.launcher.n_jobs=")), None)
        if given is not None and not (given.isdigit() and int(given) > 0):
            raise UserError(f"hydra.launcher.n_jobs={given}: the chains to run at once, an integer >= 1 (or "
                            "study.jobs=N)")
        n_jobs = int(given) if given is not None else study.jobs or max(1, min(cores, num_chains))
        rest = [a for a in args if not a.startswith("hydra.launcher.n_jobs=")]
        return study.threads or max(1, cores // n_jobs), ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}",
                                                          *rest]
    return study.threads, [f"hydra/launcher={chosen}", *args]  # a cluster job gets its own cores


def split_args(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(study overrides, launcher overrides, overrides for every arm)."""
    argv = [ALIASES.get(a, a) for a in argv]
    study = [a for a in argv if a.split("=", 1)[0] == "study" or a.startswith("study.")]
    launcher = [a for a in argv if a.startswith(("hydra/launcher=", "hydra.launcher."))]
    common = [a for a in argv if a not in study and a not in launcher]
    if bad := [a for a in common if a.startswith(("hydra.", "hydra/")) and not a.startswith("hydra.searchpath=")]:
        raise UserError(f"{bad[0]}: a study sets each chain's hydra.* itself; only hydra/launcher=..., "
                        "hydra.launcher.*=... and hydra.searchpath=... may be given")
    owned = {"seed": "study.seeds=N (or a list)", "generation": "study.generation=G", "threads": "study.threads=N"}
    if bad := [a for a in common if a.split("=", 1)[0].lstrip("+~") in owned]:
        key = bad[0].split("=", 1)[0].lstrip("+~")
        raise UserError(f"{bad[0]}: a study sets every chain's {key} itself; use {owned[key]}")
    return study, launcher, common


def _run_chains(todo: list[Chain], chains: list[Chain], sources: set[str | None], root: Path,
                launcher: list[str]) -> int:
    """Launch the chains left to run, in the order the launcher needs; its exit status."""
    if launcher[0] in ("hydra/launcher=basic", "hydra/launcher=joblib"):
        # one launch: chains that others adopt from go first, and an adopting chain that starts while its source
        # still trains generation 0 waits for it (resume.wait_for_generation0); no core idles between stages
        ordered = sorted(todo, key=_launch_order)
        status = _launch([_job(c, root) for c in ordered], root, launcher, "chains")
    else:  # a cluster may start jobs in any order: the shared generations 0 first (by depth), then every chain
        status = 0
        for depth in range(max((c.depth for c in chains), default=0)):
            first = [_job(c, root, generation=0) for c in todo if c.run_dir in sources and c.depth == depth
                     and not RunStore(root / c.run_dir).is_done(0)]
            status = max(status, _launch(first, root, launcher, f"stage {depth + 1} (shared generations 0)"))
        # the last stage runs even after a failed one: chains that share nothing with a failed one still finish
        status = max(status, _launch([_job(c, root) for c in todo], root, launcher, "stage last (every chain)"))
    return status


def run_study(argv: list[str]) -> Path:
    """Plan, run (resuming) and report the study `argv` describes; returns its dir. Raises UserError."""
    study_args, launcher_args, common = split_args(argv)
    study, raw = load_study(study_args + [a for a in common if a.startswith("hydra.searchpath=")])
    root = study_dir(study, common)
    threads, launcher = _threads_and_launcher(study, launcher_args,
                                              len(arms_of(study)) * len(seed_list(study.seeds)))
    record_path = root / STUDY_FILE
    previous = json.loads(record_path.read_text()) if record_path.exists() else {}
    if previous.get("threads") is not None and threads != previous["threads"]:
        # a chain resumes only under the thread count it started with (resume.check_environment)
        log.warning("%s started its chains with %s torch thread(s) each; they keep them (not %s)", root,
                    previous["threads"], threads)
        threads = previous["threads"]
    chains = plan(study, common, threads)
    root.mkdir(parents=True, exist_ok=True)
    if previous.get("chains") and [c["run_dir"] for c in previous["chains"]] != [c.run_dir for c in chains]:
        log.warning("%s was planned with other arms or seeds; chains that are in both resume", root)
    any_data = any(RunStore(root / c.run_dir).num_done() > 0 for c in chains)
    plan_record = register_plan(previous, plan_hash(raw, common, plan_keys(previous)), any_data)
    if plan_record["changes"] and plan_record["changes"][-1]["after_data"]:
        log.warning("%s: the plan (arms, seeds, horizon, claims or rules) changed after chains ran: its verdicts will "
                    "read 're-analysed after the data'", root)
    record = {"name": study.name, "study": raw, "common_overrides": common, "model": study_model(study, common),
              "launcher": launcher, "threads": threads, "plan": plan_record, "chains": [c.__dict__ for c in chains],
              "runs": previous.get("runs", [])}
    atomic_write_text(record_path, to_json(record))

    sources = {c.shares_with for c in chains}
    todo = [c for c in chains if RunStore(root / c.run_dir).num_done() <= c.generation]
    shared = sum(c.shares_with is not None for c in chains)
    log.info("study %s: %d arm(s) × %d seed(s) = %d chains in %s (%d adopt a shared generation 0; %d to run)",
             study.name, len(arms_of(study)), len(seed_list(study.seeds)), len(chains), root, shared, len(todo))
    for chain in todo:  # an earlier attempt's FAILED would stop the chains that wait for this one's generation 0
        (root / chain.run_dir / FAILED).unlink(missing_ok=True)
    began = time.perf_counter()

    def count() -> tuple[int, int]:  # (chains finished, generations finished) as the files on disk say
        done = [min(RunStore(root / c.run_dir).num_done(), c.generation + 1) for c in chains]
        return sum(d > c.generation for d, c in zip(done, chains, strict=True)), sum(done)

    watch = StudyWatch(f"study {study.name}", len(chains), sum(c.generation + 1 for c in chains), count)
    with watch:
        status = _run_chains(todo, chains, sources, root, launcher)
    seconds = time.perf_counter() - began
    log.info("%s", watch.line(*watch.last, seconds))
    record["runs"].append({"time": datetime.datetime.now().isoformat(timespec="seconds"), "seconds": seconds,
                           "chains_run": len(todo), "exit_status": status})
    atomic_write_text(record_path, to_json(record))

    result = build_study_report(root)
    failed = [(c.run_dir, found) for c in chains if (found := read_failed(root / c.run_dir))]
    for run_dir, (code, reason) in failed:
        log.error("chain %s failed (exit %d): %s", run_dir, code, reason)
    log.info("study %s: %.0f s; %s", study.name, seconds,
             "; ".join(f"{name}: {c['verdict']}" for name, c in result["claims"].items()) or "no claims")
    log.info("report: %s", root / "study.html")
    if failed:
        raise StudyFailed(f"{len(failed)} chain(s) failed (see above); rerun the same command to resume them",
                          status or 1)
    if status or result["missing"]:
        raise StudyFailed(f"the launcher exited with status {status}; {len(result['missing'])} chain(s) unfinished "
                          "(see above); rerun the same command to resume", status or 1)
    return root


def plan_only(argv: list[str]) -> list[Chain]:
    """`--plan`: compose and check every arm and claim as a run would (the horizons, the home families, the shared
    generations 0), print the chains, and write nothing."""
    study_args, launcher_args, common = split_args(argv)
    study, _ = load_study(study_args + [a for a in common if a.startswith("hydra.searchpath=")])
    threads, _ = _threads_and_launcher(study, launcher_args, len(arms_of(study)) * len(seed_list(study.seeds)))
    chains = plan(study, common, threads)
    print(f"study {study.name} ({study_model(study, common)}): {len(chains)} chains in {study_dir(study, common)}")
    for c in chains:
        print(f"  {c.run_dir}: generations 0..{c.generation}"
              + (f", generation 0 from {c.shares_with}" if c.shares_with else ""))
    print(f"the plan is valid: {len(study.claims)} claim(s) checked against every arm's horizon and families")
    return chains


class StudyFailed(UserError):
    """A chain of the study failed; the others' results are on disk and in the report."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def main(argv: list[str] | None = None) -> int:
    """The command: errors.EXIT_CODES (2 a bad study or override, a failed chain's own code, 130 on Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    if "--version" in argv:
        print(version_line("imgcollapse-study"))
        return EXIT_DONE
    if {"-h", "--help"} & set(argv):
        print(__doc__)
        print("studies:", ", ".join(sorted(p.stem for p in (CONF_DIR / "study").glob("*.yaml"))))
        print(exit_codes_text(), "A study exits with its first failed chain's code once every other chain has run.",
              sep="\n")
        return EXIT_DONE
    try:
        if "--plan" in argv:
            plan_only([a for a in argv if a != "--plan"])
            return EXIT_DONE
        run_study(argv)
    except KeyboardInterrupt:
        log.error("interrupted: finished generations are kept; rerun the same command to resume every chain")
        return EXIT_INTERRUPTED
    except StudyFailed as e:
        log.error("%s", e)
        return e.status
    except WriteFailed as e:  # the study's own files (study.json, the report): a chain's is its own exit status
        log.error("%s. Free space (or fix the error) and rerun the same command to resume", e)
        return EXIT_WRITE
    except UserError as e:
        log.error("%s", e)
        return EXIT_USER
    except Exception as e:  # Hydra's composition errors of the study itself
        if type(e).__module__.startswith(("hydra", "omegaconf")):
            log.error("%s", describe_config_error(e))
            return EXIT_USER
        raise
    return EXIT_DONE


if __name__ == "__main__":
    sys.exit(main())
