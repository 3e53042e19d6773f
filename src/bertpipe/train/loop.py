"""The pretraining loop: one step (micro-batches, mixed precision, loss scaling, clipping, AdamW or LAMB), validation,
and the loop that runs steps, reports metrics to its sinks, checkpoints when the checkpoint manager says so, and
stops on a preemption signal.

Losses are normalised by the whole global batch (masked-LM by its real predictions, next-sentence by its
sequences), so one process and N processes with the same global batch compute the same loss and gradients.
The data position is the step (train/batches.py), and every rank's RNG state is in the checkpoint, so a resumed run
repeats the uninterrupted one exactly (bitwise on a CPU with deterministic settings).
"""

import contextlib
import dataclasses
import logging
import os
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import record_function

from bertpipe import BertpipeError
from bertpipe.settings import EXECUTION, IDENTITY, PhaseSettings, TrainingSettings, run_part
from bertpipe.train import checkpoint
from bertpipe.train.batches import RankBatches, global_batch_indices, rank_batch_stream
from bertpipe.train.checkpoint import CheckpointDamaged, CheckpointManager, load
from bertpipe.train.distributed import StopRequest, all_sums, decided_on_rank_zero, gather_objects, init
from bertpipe.train.evaluation import evaluation_metrics, evaluation_totals, forward_sums
from bertpipe.train.objectives import OBJECTIVES
from bertpipe.train.optim import OPTIMIZERS, learning_rate
from bertpipe.train.precision import COMPUTE_DTYPES, ConstantLossScaler, DynamicLossScaler, gradients_overflow
from bertpipe.train.telemetry import StepTelemetry

log = logging.getLogger(__name__)


def _rng_state() -> dict:
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Trainer:
    """Trains `model_config` with `training` settings through one `phase`, under `recipe` (objectives.py: the
    model and its losses). `train_samples` and `valid_samples` (or None) have `len()` and `read(indices, epochs) ->
    batch of tensors` (tfrecord_reader.TFRecordSamples, loose_json_samples.LooseJsonSamples under bert2019,
    packed_sequences.PackedSamples under modern).
    On rank 0 every record of metrics goes to each of `sinks` (train/metrics.py)."""

    def __init__(self, model_config, training: TrainingSettings, phase: PhaseSettings, train_samples,
                 valid_samples=None, checkpoints: CheckpointManager = None, sinks=(), inputs=None, flags=None,
                 stop: StopRequest = None, recipe: str = "bert2019"):
        """`inputs`: content hashes of what this run learns from ({"tokenizer": ..., "train_data": ...}); `flags`:
        the command's other values that are part of the run's identity (how samples are made of the data). Both go
        into its checkpoints' record of the run, so that a resume or an --init-from of another run is caught
        (rank 0's are checked). `stop`: the stop request to heed (one of its own by default)."""
        self.training, self.phase, self.inputs, self.flags = training, phase, inputs or {}, flags or {}
        self.objective = OBJECTIVES[recipe]
        self.initialised_from = checkpoint.FROM_SCRATCH  # the --init-from checkpoint's record, part of the identity
        self.checkpoints = checkpoints or CheckpointManager()
        self.rank, self.world, self.device = init()
        self.sinks = sinks if self.rank == 0 else ()
        if training.precision == "fp16" and self.device.type == "cpu":
            log.info("fp16 on a CPU: autocast to float16 and loss scaling run here, slowly; use a GPU for speed")
        if training.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS refuses determinism without it
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(training.seed)  # the same initial weights on every rank
        self.model = self.objective.model_class(model_config).to(self.device)
        torch.manual_seed(training.seed + self.rank)  # each rank its own dropout masks
        self.ddp = DistributedDataParallel(self.model) if self.world > 1 else None
        # What the training step calls: compiled, it shares the parameters of self.model, whose state dict (no
        # `_orig_mod.` prefix) the checkpoints hold; validation calls self.model, so eval mode compiles nothing.
        self.train_model = torch.compile(self.ddp or self.model) if training.compile else self.ddp or self.model
        if training.compile:
            self._log("training the model under torch.compile: the first step compiles it")
        self.optimizer = OPTIMIZERS[training.optimizer](self.model, phase.lr, training.weight_decay)
        scaler_kind = ConstantLossScaler if training.loss_scale else DynamicLossScaler
        self.scaler = scaler_kind(**({"initial_scale": training.loss_scale} if training.loss_scale else {}),
                                  window=training.loss_scale_window, min_scale=training.min_scale,
                                  hysteresis=training.hysteresis)
        self.train_samples, self.valid_samples = train_samples, valid_samples
        self.iteration = 0  # global batches consumed (the data position)
        self.optimizer_steps = 0  # steps taken: the LR schedule's clock, which skipped steps do not advance
        self.stop = stop or StopRequest()
        self.stopped_by = None  # the signal that stopped the run early
        self.telemetry = StepTelemetry(COMPUTE_DTYPES[training.precision], self.device, self.world)
        self._resume_or_init()

    # -- state -------------------------------------------------------------------------------------------------
    def run_record(self) -> dict:
        """What this run is and how it is carried out, as settings.py classifies each setting: `identity` (its
        inputs, flags, model, phase and training settings of IDENTITY, processes, and the checkpoint it started from:
        a checkpoint of another identity is of another run) and `execution` (the settings a resume may cross)."""
        return {"identity": {"inputs": self.inputs, "flags": self.flags, "world": self.world,
                             "model": dataclasses.asdict(self.model.config),
                             "phase": run_part(self.phase, IDENTITY), "training": run_part(self.training, IDENTITY),
                             "initialised_from": self.initialised_from},
                "execution": {"training": run_part(self.training, EXECUTION)}}

    def state_dict(self, rng: list) -> dict:
        """What a checkpoint holds: weights, optimizer, scaler, the data position and clock, every rank's RNG, the
        recipe and the model's config (what model_loading rebuilds the model from) and the record of the run."""
        return {"recipe": self.objective.name, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "iteration": self.iteration, "optimizer_steps": self.optimizer_steps, "rng": rng,
                "model_config": dataclasses.asdict(self.model.config), "run": self.run_record()}

    def _choose_start(self) -> tuple:
        """(checkpoint to resume or None, checkpoint to take the initial weights from or None, its record), chosen
        on rank 0: a listing on a shared file system can differ between nodes."""
        initial = self.checkpoints.initial_checkpoint(self.run_record()["identity"])
        self.initialised_from = initial[1] if initial else checkpoint.FROM_SCRATCH
        resumed = self.checkpoints.resume(self.run_record())
        return (str(resumed) if resumed else None, str(initial[0]) if initial else None, self.initialised_from)

    def _load_on_every_rank(self, path: str) -> dict:
        """The state of checkpoint `path`, loaded by each rank; a rank that cannot stops them all, naming itself."""
        state = error = None
        try:
            state = load(path)
        except (CheckpointDamaged, BertpipeError) as failure:
            error = f"rank {self.rank}: {path}: {failure}"
        errors = [message for message in gather_objects(error) if message]
        if errors:
            raise BertpipeError("; ".join(errors))
        return state

    def _resume_or_init(self):
        resumed, initial, self.initialised_from = decided_on_rank_zero(self._choose_start)
        if resumed:
            state = self._load_on_every_rank(resumed)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            self.iteration, self.optimizer_steps = state["iteration"], state["optimizer_steps"]
            if len(state["rng"]) == self.world:
                _set_rng_state(state["rng"][self.rank])
            else:
                log.warning("%s was saved by %d ranks, not %d: dropout streams start afresh", resumed,
                            len(state["rng"]), self.world)
            self._log(f"resumed from {resumed} at step {self.iteration}")
        elif initial:
            self.model.load_state_dict(self._load_on_every_rank(initial)["model"])
            self._log(f"initialised from the weights of {initial}")

    def save(self):
        """Checkpoint the run here; the checkpoint's folder on rank 0, None elsewhere or without --save."""
        rng = gather_objects(_rng_state())
        if self.rank != 0:
            return None
        path = self.checkpoints.save(self.iteration, self.state_dict(rng), self.run_record())
        if path:
            self._log(f"saved {path}")
        return path

    # -- one step ----------------------------------------------------------------------------------------------
    def step(self, batches) -> dict:
        """One optimizer step (or a skipped one) on the next item of `batches`: this rank's micro-batches of global
        batch `iteration`. Its time includes waiting for them, so samples/s shows a loader that starves the step, and
        data_wait_fraction says how much of it was waiting. Its parts are named for torch.profiler
        (bertpipe.data, bertpipe.forward_backward, bertpipe.optimizer; bench/trainer_bench.py times them)."""
        training, phase, model = self.training, self.phase, self.train_model
        started = time.perf_counter()
        with record_function("bertpipe.data"):
            micro_batches = next(batches)
        waiting = time.perf_counter() - started
        objective = self.objective
        counted = [objective.counts(batch) for batch in micro_batches]
        names = (*objective.losses, "tokens")
        counts = dict(zip(names, all_sums([sum(c[name] for c in counted) for name in names], self.device)))
        sequences = phase.batch_size * phase.gradient_accumulation_steps * self.world
        scale = self.scaler.scale if training.precision == "fp16" else 1.0
        loss_sums = dict.fromkeys(objective.losses, 0.0)
        for index, batch in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            with (self.ddp.no_sync() if self.ddp and not last else contextlib.nullcontext(),
                  record_function("bertpipe.forward_backward")):
                batch, _, sums = forward_sums(objective, model, batch, self.device, training.precision)
                # DDP averages gradients over ranks; the world factor turns that into the sum the global mean needs.
                terms = [sums[name] / counts[name] for name in objective.losses]
                loss = sum(terms[1:], terms[0]) * self.world
                (loss * scale).backward()
                for name in objective.losses:
                    loss_sums[name] += sums[name].item()

        with record_function("bertpipe.optimizer"):
            lr, overflow, grad_norm = self._optimizer_step(scale)
        self.iteration += 1
        seconds = time.perf_counter() - started
        losses = {f"{name}_loss": total / counts[name]
                  for name, total in zip(objective.losses, all_sums(list(loss_sums.values()), self.device))}
        return {"step": self.iteration, "loss": sum(losses.values()), **losses,
                "lr": lr, "loss_scale": scale, "skipped": self.scaler.skipped, "overflow": bool(overflow),
                "grad_norm": grad_norm, "samples_per_second": sequences / seconds,
                **self.telemetry(objective.flops(self.model.config, batch, sequences), sequences,
                                 phase.seq_length, counts["tokens"], seconds, waiting)}

    def _optimizer_step(self, scale: float) -> tuple:
        """Unscale the gradients, check them for inf and nan (raising where no fp16 scaler can skip the step), clip,
        step or skip, zero the gradients and update the loss scale: (lr, overflow, gradient norm or None)."""
        training, phase = self.training, self.phase
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        if scale != 1.0:
            torch._foreach_div_([p.grad for p in parameters], scale)
        overflow = gradients_overflow(parameters)
        if overflow and training.precision != "fp16":
            raise BertpipeError(f"step {self.iteration + 1}: inf or nan in the gradients without fp16 loss scaling; "
                                "the weights were not updated: lower --lr or check the data, then rerun to resume")
        lr = learning_rate(self.optimizer_steps, phase.lr, phase.lr_decay_iters or phase.train_iters,
                           training.warmup, training.lr_decay_style, training.decay_fraction)
        grad_norm = None  # JSON has no nan: a skipped step has no norm
        if not overflow:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, training.clip_grad or float("inf")))
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
            self.optimizer_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        if training.precision == "fp16":
            self.scaler.update(overflow)
        return lr, overflow, grad_norm

    # -- validation ----------------------------------------------------------------------------------------------
    def validate(self) -> dict:
        """Masked-LM loss, perplexity and accuracy, and next-sentence accuracy over the first `eval_iters` global
        batches of the valid split (the same batches each time)."""
        per_rank = self.phase.batch_size

        def batches():
            for batch_index in range(self.training.eval_iters):
                yield self.valid_samples.read(*global_batch_indices(
                    batch_index, per_rank * self.world, len(self.valid_samples), seed=0, start=self.rank * per_rank,
                    count=per_rank))

        self.model.eval()
        totals = evaluation_totals(self.objective, self.model, batches(), self.device, self.training.precision)
        self.model.train()
        totals = dict(zip(totals, all_sums(list(totals.values()), self.device)))
        return {"step": self.iteration, **evaluation_metrics(totals, "valid_")}

    # -- the loop ------------------------------------------------------------------------------------------------
    def _log(self, message: str):
        if self.rank == 0:
            print(message, flush=True)

    def _report(self, metrics: dict):
        for sink in self.sinks:
            sink(metrics)

    def train(self) -> str:
        """Train to `train_iters`; returns 'done', or 'stopped' after a signal made it checkpoint and stop."""
        training, phase = self.training, self.phase
        self.model.train()
        last_saved = saved = None
        batches = rank_batch_stream(
            RankBatches(self.train_samples, phase.batch_size, phase.gradient_accumulation_steps, self.rank, self.world,
                        training.seed),
            range(self.iteration, phase.train_iters), training.num_workers, pin_memory=self.device.type == "cuda")
        try:
            while self.iteration < phase.train_iters:
                self._report(self.step(batches))
                if self.valid_samples and self.iteration % training.eval_interval == 0:
                    self._report(self.validate())
                if self.checkpoints.due(self.iteration, phase.train_iters):
                    saved = self.save()
                    last_saved = self.iteration
                if self.iteration < phase.train_iters and (stop := self.stop.requested(self.device)):
                    if last_saved != self.iteration:
                        saved = self.save()
                    self.stopped_by = stop
                    self._log(f"stopping at step {self.iteration} of {phase.train_iters} on {stop.name}: "
                              + (f"saved {saved}; a rerun resumes from step {self.iteration}" if saved else
                                 "nothing saved: there is no --save folder"))
                    return "stopped"
            return "done"
        finally:
            self.stop.release()
            for sink in self.sinks:
                sink.close()
