"""Stage `evaluate`: masked-LM perplexity and accuracy (MLPerf's masked-LM accuracy: argmax at the masked positions)
and next-sentence accuracy of a checkpoint, over every record of the test split; and what the model fills in, for a
person to read: a table of masked test sentences with the true token and the model's top predictions."""

import html
import json
import logging

import numpy as np

from bertpipe import settings
from bertpipe.atomic import atomic_file
from bertpipe.settings import EvaluateSettings, TrainingSettings
from bertpipe.tracking import Outcome

log = logging.getLogger(__name__)

FILL_MASK_EXAMPLES = 12
TOP_K = 5
CONTEXT_TOKENS = 16  # shown on each side of the masked token


def evaluate(checkpoint_dir, test_data, tokenizer_dir, out, fill_mask_out, batch_size: int, precision: str) -> dict:
    import torch

    from bertpipe.model_loading import load_model
    from bertpipe.tfrecord_reader import TFRecordSamples
    from bertpipe.tokenizer_folder import Tokenizer
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
    with torch.no_grad():
        rows = fill_mask_rows(model, samples, Tokenizer(tokenizer_dir), device)
    with atomic_file(fill_mask_out) as temp:
        temp.write_text(fill_mask_html(rows, f"{source}, step {state['iteration']}"))
    with atomic_file(out) as temp:
        temp.write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("%s: perplexity %.3f, masked-LM accuracy %.4f, next-sentence accuracy %.4f", source,
             metrics["test_perplexity"], metrics["test_mlm_accuracy"], metrics["test_nsp_accuracy"])
    return metrics


def fill_mask_rows(model, samples, tokenizer, device, count: int = FILL_MASK_EXAMPLES) -> list:
    """What the model fills in, on `count` test records spread over the split (records side by side come from one
    document): each with its true tokens put back and one ordinary token masked, as HuggingFace's fill-mask pipeline
    asks. Rows of {"left", "right": the text around the mask, "true": the token, "predictions": [(token,
    probability)] x TOP_K}."""
    import torch

    special = {tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id}
    spread = np.unique(np.linspace(0, len(samples) - 1, num=min(len(samples), 2 * count)).astype(np.int64))
    batch = samples.read(spread)
    rows = []
    for record in range(len(spread)):
        ids = batch["input_ids"][record].clone()
        weights = batch["masked_lm_weights"][record] > 0
        positions = batch["masked_lm_positions"][record][weights]
        ids[positions] = batch["masked_lm_ids"][record][weights]  # the record as written, before masking
        length = int(batch["input_mask"][record].sum())
        ordinary = [int(p) for p in positions if int(ids[p]) not in special]
        # A whole word reads best (not "arr[MASK]ed"): a word start followed by one; else any ordinary token.
        whole = [p for p in ordinary if tokenizer.is_word_start[int(ids[p])]
                 and (p + 1 >= length or tokenizer.is_word_start[int(ids[p + 1])])]
        masked = (whole or ordinary or [None])[0]
        if masked is None:
            continue
        true_id = int(ids[masked])
        ids[masked] = tokenizer.mask_id
        mlm_logits, _ = model(ids[None].to(device), batch["segment_ids"][record][None].to(device),
                              batch["input_mask"][record][None].to(device), torch.tensor([[masked]], device=device))
        top = mlm_logits[0, 0].float().softmax(-1).cpu().topk(TOP_K)

        # The context: the masked token's segment ([CLS] A [SEP] B [SEP]; B may be another document's), whole words.
        separators = np.flatnonzero(np.isin(ids[:length].numpy(), [tokenizer.cls_id, tokenizer.sep_id])).tolist()
        begin = max([masked - CONTEXT_TOKENS] + [s + 1 for s in separators if s < masked])
        end = min([masked + 1 + CONTEXT_TOKENS, length] + [s for s in separators if s > masked])
        while begin < masked and not tokenizer.is_word_start[int(ids[begin])]:
            begin += 1
        while masked + 1 < end < length and end not in separators and not tokenizer.is_word_start[int(ids[end])]:
            end -= 1
        rows.append({"left": tokenizer.decode(ids[begin:masked].tolist()),
                     "right": tokenizer.decode(ids[masked + 1:end].tolist()),
                     "true": tokenizer.token(true_id),
                     "predictions": [(tokenizer.token(i), float(p)) for p, i in zip(top.values, top.indices)]})
        if len(rows) == count:
            break
    return rows


def fill_mask_html(rows: list, model_name: str) -> str:
    """The rows as a page (pages.py); a prediction that is the true token is in bold."""
    from bertpipe.pages import table_page

    def cell(token, probability, true):
        text = f"{html.escape(token)} {probability:.3f}"
        return f"<b>{text}</b>" if token == true else text

    top1 = np.mean([row["predictions"][0][0] == row["true"] for row in rows]) if rows else 0.0
    cells = [[f"{html.escape(row['left'])} <mark>[MASK]</mark> {html.escape(row['right'])}",
              f"<b>{html.escape(row['true'])}</b>",
              " &middot; ".join(cell(token, p, row["true"]) for token, p in row["predictions"])] for row in rows]
    return table_page(f"What {model_name} fills in",
                      f"{len(rows)} test sentences, one token masked in each; the top {TOP_K} predictions with their "
                      f"probabilities; right at the first guess in {top1:.0%}.",
                      [(None, ["context", "true token", f"top {TOP_K} predictions"], cells)])


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a checkpoint folder, or a folder of checkpoints (newest)")
    parser.add_argument("--test-data", nargs="+", required=True, help="TFRecord files or globs of the test split")
    parser.add_argument("--tokenizer", required=True, help="the tokenizer stage's folder (to show the fill-mask table)")
    settings.add_arguments(parser, EvaluateSettings)
    settings.add_arguments(parser, TrainingSettings, only=("precision",))
    parser.add_argument("--out", required=True, help="metrics (JSON)")
    parser.add_argument("--fill-mask", required=True, help="the fill-mask table (HTML) to write")
    parser.set_defaults(run=run, label="out", inputs=("test_data",), system_metrics=True)


def run(args, _) -> Outcome:
    from bertpipe.memory import fix_mmap_threshold

    fix_mmap_threshold()
    metrics = evaluate(args.checkpoint, args.test_data, args.tokenizer, args.out, args.fill_mask, args.batch_size,
                       args.precision)
    return Outcome(metrics=metrics, tags={"checkpoint": metrics["checkpoint"]},
                   artifacts=[(args.out, None), (args.fill_mask, None)])
