"""chinchax as an lm-evaluation-harness model: `lm_eval --model chinchax --model_args run=RUN_DIR`.

lm-eval 0.4.13 finds models only in its own registry (`lm_eval.api.registry.model_registry`, filled by
`@register_model` when a module is imported, and by its built-in `MODEL_MAPPING`); it reads no entry points
and has no plugin hook, so its own `lm_eval` command cannot see an outside model class. Importing this
module registers "chinchax"; `python -m chinchax.evaluation.lm_eval_main ARGS` (and `chinchax lm-eval
ARGS`) imports it and then runs lm-eval's own CLI with the same arguments. From Python, pass the class or
an instance to `lm_eval.simple_evaluate(model=ChinchaxLM(run=...))`.

The requests are scored with chinchax's own pieces, so numbers equal `chinchax eval`:
- loglikelihood: `multiple_choice.score_pairs` (lm-eval's tokenization of the pair, the variant's natural
  scoring of `evaluation.scoring.Scorer`: causal, prefix-LM, encoder-decoder, masked PLL for encoder-only);
- loglikelihood_rolling: lm-eval's own rolling windows (`get_rolling_token_windows`, disjoint), each window
  scored as a continuation (the first from BOS alone); every token predicted exactly once;
- generate_until: KV-cache decoding (`generation_tasks.continue_texts`) cut at the `until` strings; greedy
  unless `do_sample`/`temperature` ask otherwise.

`ChinchaxShotSampler` is an lm-eval few-shot sampler that draws chinchax's shots (fewshot.draw), so an lm-eval
task over a chinchax JSONL builds the same k-shot prompts as `chinchax eval --shots k` (`export_task`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.api.samplers import ContextSampler
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from chinchax.errors import UserError
from chinchax.evaluation import fewshot
from chinchax.evaluation.tasks import _parse

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default


def _int_arg(name: str, value, default: int) -> int:
    if value is None or str(value).startswith("auto"):  # lm-eval's "auto"/"auto:N": a fixed batch here
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UserError(f"model_args {name}={value!r} must be an integer") from None


@register_model("chinchax")
class ChinchaxLM(LM):
    """An lm-eval LM over a chinchax run directory or converted checkpoint (`run=`, optional `tokenizer=`, a
    load_tokenizer spec overriding the run's); `batch_size` rows per scoring call."""

    def __init__(self, run: str | None = None, batch_size: int | str | None = 16, max_batch_size=None, device=None,
                 max_gen_toks: int | str = DEFAULT_MAX_GEN_TOKS, seed: int | str = 0, tokenizer: str | None = None,
                 **unknown):
        super().__init__()
        if unknown:
            raise UserError(f"unknown chinchax model_args {sorted(unknown)}; known: run, tokenizer, max_gen_toks, seed "
                            "(batch_size is lm_eval's own --batch_size)")
        if not run:
            raise UserError("lm_eval --model chinchax needs --model_args run=RUN_DIR (a `chinchax train` run directory)")
        from chinchax.evaluation.run_loading import load_run
        from chinchax.evaluation.scoring import Scorer

        self.loaded = load_run(run, tokenizer=tokenizer)  # a converted HF checkpoint may need tokenizer=
        self.model, self.tok = self.loaded.model, self.loaded.tokenizer
        self.batch_size = _int_arg("batch_size", batch_size, 16)
        self.max_gen_toks = _int_arg("max_gen_toks", max_gen_toks, DEFAULT_MAX_GEN_TOKS)
        self.seed = _int_arg("seed", seed, 0)
        self.scorer = Scorer(self.model, bos_id=self.tok.bos_id, mask_id=self.tok.mask_id, pad_id=self.tok.pad_id,
                             batch_size=self.batch_size)

    @property
    def max_length(self) -> int:
        return self.model.cfg.max_len

    def get_model_info(self) -> dict:
        return {"chinchax_run": str(self.loaded.run_dir), "chinchax_step": self.loaded.step,
                "variant": self.model.cfg.variant, "max_length": self.max_length}

    def _context(self):
        from chinchax.sharding import model_context

        return model_context(self.model)

    # --- lm-eval's three request types ---------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        from chinchax.evaluation.multiple_choice import score_pairs

        texts = [tuple(r.args) for r in requests]
        with self._context():
            scores, _ = score_pairs(self.scorer, self.tok, texts, name="lm_eval loglikelihood")
        out = [(s.logprob, s.is_greedy) for s in scores]
        for pair, result in zip(texts, out, strict=True):
            self.cache_hook.add_partial("loglikelihood", pair, result)
        return out

    def rolling_windows(self, text: str) -> list[tuple[list[int], list[int]]]:
        """lm-eval's disjoint rolling windows, sized so that BOS + window fits the model's context."""
        tokens = self.tok.encode(text)
        windows = map(make_disjoint_window, get_rolling_token_windows(
            token_list=tokens, prefix_token=self.tok.bos_id, max_seq_len=self.max_length - 1, context_len=1))
        # the first window's context is lm-eval's prefix token alone: the scorer shifts BOS in itself
        return [([] if i == 0 else ctx, pred) for i, (ctx, pred) in enumerate(windows)]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        with self._context():
            for r in requests:
                (text,) = r.args
                windows = self.rolling_windows(text)
                total = sum(s.logprob for s in self.scorer.score(windows)) if windows else 0.0
                self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
                out.append(total)
        return out

    def _sampling(self, gen_kwargs: dict):
        from chinchax.model.decoding import SamplingConfig

        kwargs = dict(gen_kwargs)
        until = kwargs.pop("until", None) or [fewshot.SEPARATOR]
        until = [until] if isinstance(until, str) else list(until)
        max_new = _int_arg("max_gen_toks", kwargs.pop("max_gen_toks", None), self.max_gen_toks)
        cap = self.max_length // 2  # leave half the context for the prompt (lm-eval cuts prompts to max_len - max_gen)
        if max_new > cap:
            print(f"[chinchax lm_eval] max_gen_toks={max_new} capped at {cap}: half the model's context of "
                  f"{self.max_length} tokens, so prompts keep the other half", file=sys.stderr)
            max_new = cap
        do_sample = bool(kwargs.pop("do_sample", False))
        temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
        sampling = SamplingConfig(max_new_tokens=max_new, temperature=temperature if do_sample or temperature else 0.0,
                                  top_k=int(kwargs.pop("top_k", 0) or 0), top_p=float(kwargs.pop("top_p", 1.0) or 1.0),
                                  seed=self.seed).validate()
        if kwargs:
            print(f"[chinchax lm_eval] ignoring generation kwargs {sorted(kwargs)}", file=sys.stderr)
        return sampling, until

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from chinchax.evaluation.generation_tasks import continue_texts

        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}  # one decoding setting per group
        for i, r in enumerate(requests):
            groups.setdefault(json.dumps(r.args[1], sort_keys=True, default=str), []).append(i)
        with self._context():
            for key, idx in groups.items():
                sampling, until = self._sampling(json.loads(key))
                texts = continue_texts(self.model, self.tok, [requests[i].args[0] for i in idx], sampling,
                                       batch_size=self.batch_size, until=until, name="lm_eval generate_until")
                for i, text in zip(idx, texts, strict=True):
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out  # type: ignore[return-value]


class ChinchaxShotSampler(ContextSampler):
    """lm-eval few-shot sampler drawing chinchax's shots: per question, seeded by (seed, the question's content),
    from the parsed shot records, the question itself left out when it is in the pool. The seed is lm-eval's
    few-shot seed (`--seed a,b,c,FEWSHOT`); pass the same to `chinchax eval --seed`.

    lm-eval hands a sampler the question only when the few-shot split is the test split, so a task whose
    shots live in another file keeps fewshot_split = test and names that file in `shots_file`
    (`sampler_for(path)`, written beside the YAML by `export_task`)."""

    shots_file: str | None = None

    def set_rnd(self, rnd):
        super().set_rnd(rnd)
        self.seed = 0 if rnd is None else int(rnd)

    def _shot_docs(self) -> list[dict]:
        if self.shots_file is None:
            return list(self.fewshot_docs())
        if not hasattr(self, "_file_docs"):
            lines = Path(self.shots_file).read_text().splitlines()
            self._file_docs = [json.loads(line) for line in lines if line.strip()]
        return self._file_docs

    def sample(self, n: int, eval_doc=None, df=None, **kwargs):
        if df:
            self.df = df
        if eval_doc is None:
            raise UserError("ChinchaxShotSampler needs the question (draws are seeded by its content), which lm-eval "
                            "passes only when fewshot_split equals test_split; keep them equal and give the shot file "
                            "with chinchax.evaluation.lm_eval_model.sampler_for(PATH) (what `chinchax lm-eval-task` writes)")
        docs = self._shot_docs()
        pool = [_record(d, f"few-shot record {i}") for i, d in enumerate(docs)]
        example = _record(eval_doc, "question")
        picked = fewshot.draw(pool, example, n, getattr(self, "seed", 0), exclude_example=self.shots_file is None,
                              task_name="lm_eval task")
        return [docs[i] for i in picked]


def sampler_for(shots_file: str | Path) -> type[ChinchaxShotSampler]:
    """A ChinchaxShotSampler whose shots come from `shots_file` (a chinchax .train.jsonl)."""
    return type("ChinchaxFileShotSampler", (ChinchaxShotSampler,), {"shots_file": str(Path(shots_file).absolute())})


def _record(doc: dict, where: str):
    return _parse({k: v for k, v in doc.items() if v is not None}, where)


TASK_YAML = """\
# written by chinchax.evaluation.lm_eval_model.export_task (`chinchax lm-eval-task`): {test} for lm-eval
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {test}
    train: {train}
test_split: test
fewshot_split: test
output_type: {output_type}
{body}fewshot_delimiter: "\\n\\n"
fewshot_config:
  sampler: !function {sampler}
"""
SAMPLER_PY = """\
# written by chinchax.evaluation.lm_eval_model.export_task: few-shot examples of {name} come from this file
from chinchax.evaluation.lm_eval_model import sampler_for

Sampler = sampler_for({train})
"""
MC_BODY = """\
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
  - metric: acc_bytes
"""
GEN_BODY = """\
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{references[0]}}}}"
target_delimiter: ""
generation_kwargs:
  until: ["\\n\\n"]
  do_sample: false
metric_list:
  - metric: exact_match
"""


def export_task(jsonl: str | Path, out_dir: str | Path, name: str | None = None) -> Path:
    """Write an lm-eval task YAML over a chinchax JSONL task (and its `.train.jsonl` sibling) into `out_dir`,
    for `lm_eval --include_path out_dir --tasks NAME`: same prompts (choices carry their own leading space,
    so target_delimiter is ""), same shots (ChinchaxShotSampler), lm-eval's acc/acc_norm/acc_bytes."""
    from chinchax.evaluation.tasks import load_jsonl_task
    from chinchax.fileio import write_text_atomic

    jsonl = Path(jsonl).absolute()
    task = load_jsonl_task(jsonl)  # validates every record
    name = name or f"chinchax_{task.name}"
    sibling = jsonl.with_name(f"{task.name}.train.jsonl")
    train = sibling if sibling.is_file() else jsonl
    body = MC_BODY if task.kind == "multiple_choice" else GEN_BODY
    if task.kind == "generation" and any("references" not in json.loads(line) for line in jsonl.read_text().splitlines()
                                         if line.strip()):
        raise UserError(f"{jsonl}: export to lm-eval needs 'references' lists in every record (not 'reference')")
    sampler = "chinchax.evaluation.lm_eval_model.ChinchaxShotSampler"
    if sibling.is_file():  # lm-eval shows the sampler the question only if fewshot_split == test_split
        sampler = f"{name}_shots.Sampler"
        write_text_atomic(Path(out_dir) / f"{name}_shots.py", SAMPLER_PY.format(name=name, train=repr(str(train))))
    text = TASK_YAML.format(name=name, test=json.dumps(str(jsonl)), train=json.dumps(str(train)), sampler=sampler,
                            output_type="multiple_choice" if task.kind == "multiple_choice" else "generate_until",
                            body=body.format())
    path = Path(out_dir) / f"{name}.yaml"
    write_text_atomic(path, text)
    return path
