"""Stage `evaluate`: masked-LM perplexity and accuracy (MLPerf's masked-LM accuracy: argmax at the masked positions)
and next-sentence accuracy of a checkpoint, over every record of the test split."""

import json
import logging

import torch

from bertpipe.atomic import atomic_file

log = logging.getLogger(__name__)


def evaluate(checkpoint_dir, test_data, out, batch_size: int, precision: str) -> dict:
    from bertpipe.pretrained import load_model
    from bertpipe.records import TFRecordSamples
    from bertpipe.train.evaluation import evaluation_metrics, evaluation_totals

    model, source, state = load_model(checkpoint_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    samples = TFRecordSamples(test_data)
    batches = (samples.read(list(range(begin, min(begin + batch_size, len(samples)))))
               for begin in range(0, len(samples), batch_size))
    totals = evaluation_totals(model, batches, device, precision)
    metrics = {**evaluation_metrics(totals, "test_"), "test_sequences": int(totals["sequences"]),
               "test_predictions": int(totals["predictions"]), "checkpoint": str(source),
               "checkpoint_step": state["iteration"]}
    with atomic_file(out) as temp:
        temp.write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("%s: perplexity %.3f, masked-LM accuracy %.4f, next-sentence accuracy %.4f", source,
             metrics["test_perplexity"], metrics["test_mlm_accuracy"], metrics["test_nsp_accuracy"])
    return metrics
