"""The pretraining loop: one step (micro-batches, mixed precision, loss scaling, clipping, AdamW), validation,
checkpoints, exact resume and preemption.

Losses are normalised by the whole global batch (masked-LM by its real predictions, next-sentence by its
sequences), so one process and N processes with the same global batch compute the same loss and gradients.
The data position is the step (train/data.py), and every rank's RNG state is in the checkpoint, so a resumed run
repeats the uninterrupted one exactly (bitwise on a CPU with deterministic settings).
"""

import contextlib
import dataclasses
import os
import json
import logging
import math
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from bertpipe import BertpipeError
from bertpipe.model import BertConfig, BertForPreTraining, pretraining_loss_sums
from bertpipe.train import checkpoint
from bertpipe.train.data import RankBatches, global_batch_indices, rank_batch_stream
from bertpipe.train.distributed import StopRequest, all_sum, gather_objects, init
from bertpipe.train.optim import adamw, learning_rate
from bertpipe.train.precision import ConstantLossScaler, DynamicLossScaler, autocast, gradients_overflow

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainSettings:
    train_data: list  # recorded in checkpoints; the samples themselves are passed to the Trainer
    valid_data: list = None
    micro_batch: int = 4
    accumulation: int = 1
    train_iters: int = 1000
    lr: float = 1e-4
    lr_decay_style: str = "linear"
    lr_decay_iters: int = None
    warmup: float = 0.01
    weight_decay: float = 0.01
    clip_grad: float = 1.0
    precision: str = "fp32"  # fp32, fp16 or bf16
    loss_scale: float = None  # fp16: a fixed scale; None: dynamic
    initial_loss_scale: float = 2.0**32
    loss_scale_window: int = 1000
    min_scale: float = 1.0
    hysteresis: int = 2
    seed: int = 1234
    save: str = None
    save_interval: int = 1000
    keep_last: int = 2
    load: str = None  # resume from the newest checkpoint here (default: --save)
    init_from: str = None  # start from these weights only (phase 2 from phase 1)
    eval_interval: int = 1000
    eval_iters: int = 10
    log_interval: int = 10
    metrics: str = None  # JSON lines, rank 0
    deterministic: bool = False
    num_workers: int = 0  # reader processes making the next steps' batches; 0: the training process reads


def _rng_state() -> dict:
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def forward_sums(model, batch: dict, device, precision: str):
    """(batch on `device`, masked-LM logits, next-sentence logits, (masked-LM loss sum, next-sentence loss sum))."""
    batch = {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}
    with autocast(precision, device.type):
        mlm_logits, nsp_logits = model(batch["input_ids"], batch["segment_ids"], batch["input_mask"],
                                       batch["masked_lm_positions"])
    return batch, mlm_logits, nsp_logits, pretraining_loss_sums(
        mlm_logits, nsp_logits, batch["masked_lm_ids"], batch["masked_lm_weights"], batch["next_sentence_labels"])


@torch.no_grad()
def evaluation_totals(model, batches, device, precision: str) -> dict:
    """Sums over `batches` of the masked-LM loss, real predictions, correct predictions (argmax, as MLPerf's
    masked-LM accuracy), correct next-sentence labels and sequences."""
    totals = dict.fromkeys(("mlm", "predictions", "mlm_correct", "nsp_correct", "sequences"), 0.0)
    for batch in batches:
        batch, mlm_logits, nsp_logits, (mlm, _) = forward_sums(model, batch, device, precision)
        weights = batch["masked_lm_weights"]
        totals["mlm"] += mlm.item()
        totals["predictions"] += float(weights.sum())
        totals["mlm_correct"] += float(((mlm_logits.argmax(-1) == batch["masked_lm_ids"]) * weights).sum())
        totals["nsp_correct"] += float((nsp_logits.argmax(-1) == batch["next_sentence_labels"][:, 0]).sum())
        totals["sequences"] += len(weights)
    return totals


def evaluation_metrics(totals: dict, prefix: str) -> dict:
    mlm_loss = totals["mlm"] / max(totals["predictions"], 1)
    return {f"{prefix}mlm_loss": mlm_loss, f"{prefix}perplexity": math.exp(min(mlm_loss, 50)),
            f"{prefix}mlm_accuracy": totals["mlm_correct"] / max(totals["predictions"], 1),
            f"{prefix}nsp_accuracy": totals["nsp_correct"] / max(totals["sequences"], 1)}


class Trainer:
    """`train_samples` and `valid_samples` (or None) have `len()` and `read(indices) -> batch of tensors`:
    TFRecordSamples or LooseJsonSamples. On rank 0, `on_metrics` gets every step's and validation's metrics."""

    def __init__(self, model_config: BertConfig, settings: TrainSettings, train_samples, valid_samples=None,
                 on_metrics=None):
        self.settings = settings
        self.on_metrics = on_metrics
        self.rank, self.world, self.device = init()
        if settings.precision == "fp16" and self.device.type == "cpu":
            log.info("fp16 on a CPU: autocast to float16 and loss scaling run here, slowly; use a GPU for speed")
        if settings.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS refuses determinism without it
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(settings.seed)  # the same initial weights on every rank
        self.model = BertForPreTraining(model_config).to(self.device)
        torch.manual_seed(settings.seed + self.rank)  # each rank its own dropout masks
        self.ddp = DistributedDataParallel(self.model) if self.world > 1 else None
        self.optimizer = adamw(self.model, settings.lr, settings.weight_decay)
        scaler_kind = ConstantLossScaler if settings.loss_scale else DynamicLossScaler
        self.scaler = scaler_kind(initial_scale=settings.loss_scale or settings.initial_loss_scale,
                                  window=settings.loss_scale_window, min_scale=settings.min_scale,
                                  hysteresis=settings.hysteresis)
        self.train_samples, self.valid_samples = train_samples, valid_samples
        self.iteration = 0  # global batches consumed (the data position)
        self.optimizer_steps = 0  # steps taken: the LR schedule's clock, which skipped steps do not advance
        self.stop = StopRequest()
        if settings.metrics and self.rank == 0:
            Path(settings.metrics).parent.mkdir(parents=True, exist_ok=True)
        self._resume_or_init()

    # -- state -------------------------------------------------------------------------------------------------
    def _resume_or_init(self):
        settings = self.settings
        candidates = [checkpoint.latest(folder) for folder in (settings.save, settings.load) if folder]
        candidates = [c for c in candidates if c is not None]
        found = max(candidates, key=lambda c: c.name) if candidates else None  # the newest, --save's on a tie
        if found:
            state = checkpoint.load(found)
            self._check_compatible(found, state)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            self.iteration, self.optimizer_steps = state["iteration"], state["optimizer_steps"]
            if len(state["rng"]) == self.world:
                _set_rng_state(state["rng"][self.rank])
            else:
                log.warning("%s was saved by %d ranks, not %d: dropout streams start afresh", found,
                            len(state["rng"]), self.world)
            self._log(f"resumed from {found} at step {self.iteration}")
        elif settings.init_from:
            source = checkpoint.latest(settings.init_from) or Path(settings.init_from)
            if not (source / "state.pt").is_file():
                raise BertpipeError(f"--init-from {settings.init_from}: no checkpoint there")
            state = checkpoint.load(source)
            if state["model_config"] != dataclasses.asdict(self.model.config):
                raise BertpipeError(f"--init-from {source}: its model config {state['model_config']} differs from "
                                    f"this run's {dataclasses.asdict(self.model.config)}")
            self.model.load_state_dict(state["model"])
            self._log(f"initialised from the weights of {source}")

    def _check_compatible(self, found, state):
        """A resumed run must read the data the saved run would have read next, with the same model."""
        saved, settings = state["settings"], self.settings
        changed = [f"{key} {saved[key]} -> {getattr(settings, key)}" for key in ("micro_batch", "accumulation")
                   if saved[key] != getattr(settings, key)]
        if state["world"] != self.world:
            changed.append(f"processes {state['world']} -> {self.world}")
        if state["model_config"] != dataclasses.asdict(self.model.config):
            changed.append("model config")
        if changed:
            raise BertpipeError(f"{found} was saved with other settings ({'; '.join(changed)}): resuming would read "
                                "other samples than the saved run; use the same settings, or a new --save folder")

    def save(self):
        rng = gather_objects(_rng_state())
        if self.rank == 0 and self.settings.save:
            state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scaler": self.scaler.state_dict(), "iteration": self.iteration,
                     "optimizer_steps": self.optimizer_steps, "rng": rng, "world": self.world,
                     "model_config": dataclasses.asdict(self.model.config),
                     "settings": dataclasses.asdict(self.settings)}
            path = checkpoint.save(self.settings.save, self.iteration, state, self.settings.keep_last)
            self._log(f"saved {path}")

    # -- one step ----------------------------------------------------------------------------------------------
    def step(self, batches) -> dict:
        """One optimizer step (or a skipped one) on the next item of `batches`: this rank's micro-batches of global
        batch `iteration`. Its time includes waiting for them, so samples/s shows a loader that starves the step."""
        settings, model = self.settings, self.ddp or self.model
        started = time.perf_counter()
        micro_batches = next(batches)
        predictions = all_sum(sum(float(b["masked_lm_weights"].sum()) for b in micro_batches), self.device)
        sequences = settings.micro_batch * settings.accumulation * self.world
        scale = self.scaler.scale if settings.precision == "fp16" else 1.0
        mlm_sum = nsp_sum = 0.0
        for index, batch in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            with model.no_sync() if self.ddp and not last else contextlib.nullcontext():
                _, _, _, (mlm, nsp) = forward_sums(model, batch, self.device, self.settings.precision)
                # DDP averages gradients over ranks; the world factor turns that into the sum the global mean needs.
                loss = (mlm / predictions + nsp / sequences) * self.world
                (loss * scale).backward()
            mlm_sum += mlm.item()
            nsp_sum += nsp.item()

        parameters = [p for p in self.model.parameters() if p.grad is not None]
        if scale != 1.0:
            torch._foreach_div_([p.grad for p in parameters], scale)
        overflow = gradients_overflow(parameters)
        if overflow and settings.precision != "fp16":
            raise BertpipeError(f"step {self.iteration + 1}: inf or nan in the gradients without fp16 loss scaling; "
                                "the weights were not updated: lower --lr or check the data, then rerun to resume")
        lr = learning_rate(self.optimizer_steps, settings.lr, settings.lr_decay_iters or settings.train_iters,
                           settings.warmup, settings.lr_decay_style)
        grad_norm = None  # JSON has no nan: a skipped step has no norm
        if not overflow:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, settings.clip_grad or float("inf")))
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
            self.optimizer_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        if settings.precision == "fp16":
            self.scaler.update(overflow)
        self.iteration += 1
        seconds = time.perf_counter() - started
        mlm_loss = all_sum(mlm_sum, self.device) / predictions
        nsp_loss = all_sum(nsp_sum, self.device) / sequences
        return {"step": self.iteration, "loss": mlm_loss + nsp_loss, "mlm_loss": mlm_loss, "nsp_loss": nsp_loss,
                "lr": lr, "loss_scale": scale, "skipped": self.scaler.skipped, "overflow": bool(overflow),
                "grad_norm": grad_norm, "samples_per_second": sequences / seconds,
                "tokens_per_second": sequences * micro_batches[0]["input_ids"].shape[1] / seconds}

    # -- validation ----------------------------------------------------------------------------------------------
    def validate(self) -> dict:
        """Masked-LM loss, perplexity and accuracy, and next-sentence accuracy over the first `eval_iters` global
        batches of the valid split (the same batches each time)."""
        per_rank = self.settings.micro_batch

        def batches():
            for batch_index in range(self.settings.eval_iters):
                indices = global_batch_indices(batch_index, per_rank * self.world, len(self.valid_samples), seed=0)
                yield self.valid_samples.read(indices[self.rank * per_rank:(self.rank + 1) * per_rank])

        self.model.eval()
        totals = evaluation_totals(self.model, batches(), self.device, self.settings.precision)
        self.model.train()
        totals = {key: all_sum(value, self.device) for key, value in totals.items()}
        return {"step": self.iteration, **evaluation_metrics(totals, "valid_")}

    # -- the loop ------------------------------------------------------------------------------------------------
    def _log(self, message: str):
        if self.rank == 0:
            print(message, flush=True)

    def _record(self, metrics: dict):
        if self.rank != 0:
            return
        if self.settings.metrics:
            with open(self.settings.metrics, "a") as f:
                f.write(json.dumps(metrics) + "\n")
        if self.on_metrics:
            self.on_metrics(metrics)

    def train(self) -> str:
        """Train to `train_iters`; returns 'done', or 'stopped' after a signal made it checkpoint and stop."""
        settings = self.settings
        self.model.train()
        last_saved = None
        batches = rank_batch_stream(
            RankBatches(self.train_samples, settings.micro_batch, settings.accumulation, self.rank, self.world,
                        settings.seed),
            range(self.iteration, settings.train_iters), settings.num_workers, pin_memory=self.device.type == "cuda")
        while self.iteration < settings.train_iters:
            metrics = self.step(batches)
            self._record(metrics)
            if self.iteration % settings.log_interval == 0 or self.iteration == settings.train_iters:
                self._log(f"step {metrics['step']} loss {metrics['loss']:.6f} mlm {metrics['mlm_loss']:.6f} "
                          f"nsp {metrics['nsp_loss']:.6f} lr {metrics['lr']:.3e} scale {metrics['loss_scale']:g} "
                          f"skipped {metrics['skipped']} {metrics['samples_per_second']:.1f} samples/s")
            if self.valid_samples and self.iteration % settings.eval_interval == 0:
                valid = self.validate()
                self._record(valid)
                self._log(" ".join(f"{k} {v:.4f}" for k, v in valid.items() if k != "step"))
            if self.iteration % settings.save_interval == 0 or self.iteration == settings.train_iters:
                self.save()
                last_saved = self.iteration
            if self.iteration < settings.train_iters and self.stop.requested(self.device):
                if last_saved != self.iteration:
                    self.save()
                self._log(f"stopping at step {self.iteration} on a signal; "
                          + ("rerun to resume" if settings.save else "nothing saved: there is no --save folder"))
                return "stopped"
        return "done"
