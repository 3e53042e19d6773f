"""Stage `evaluate`: masked-LM perplexity and accuracy (MLPerf's masked-LM accuracy: argmax at the masked positions)
and, under bert2019, next-sentence accuracy of a checkpoint, over every record of the test split (under modern, its
packed sequences under one fixed 15% mask); the same masked-LM figures on the common test set (`test_common_*`: the
test split packed at one length under that fixed mask, the same tokens whatever the recipe, BERT reading each
document piece as a sequence of its own), so that the two recipes compare on the same text; and what the model
fills in, for a person to read: a table of masked test sentences with the true token and the model's top
predictions."""

import html
import json
import logging

import numpy as np

from bertpipe import BertpipeError, settings
from bertpipe.atomic import atomic_file
from bertpipe.settings import EvaluateSettings, TrainingSettings
from bertpipe.tracking import Outcome

log = logging.getLogger(__name__)

FILL_MASK_EXAMPLES = 12
TOP_K = 5
CONTEXT_TOKENS = 16  # shown on each side of the masked token
# The modern recipe's test set: its packed test sequences under one fixed mask of 15% (BERT's rate), the same for every
# model, whatever rate it trained with.
TEST_MASK_RATE, TEST_MASK_SEED = 0.15, 20260101


def evaluate(checkpoint_dir, test_data, tokenizer_dir, out, fill_mask_out, batch_size: int, precision: str,
             common_test_data=None, common_seq_length: int = None) -> dict:
    import torch

    from bertpipe.model_loading import load_model
    from bertpipe.packed_sequences import PackedSamples
    from bertpipe.tfrecord_reader import TFRecordSamples
    from bertpipe.tokenizer_folder import Tokenizer
    from bertpipe.train.evaluation import evaluation_metrics, evaluation_totals
    from bertpipe.train.objectives import OBJECTIVES, packed_as_bert2019

    model, source, state = load_model(checkpoint_dir)
    objective = OBJECTIVES[state.get("recipe", "bert2019")]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    tokenizer = Tokenizer(tokenizer_dir)
    modern = objective.name == "modern"
    samples = (PackedSamples(test_data, tokenizer, TEST_MASK_RATE, TEST_MASK_SEED) if modern
               else TFRecordSamples(test_data))
    batches = (samples.read(list(range(begin, min(begin + batch_size, len(samples)))), 0)
               for begin in range(0, len(samples), batch_size))
    totals = evaluation_totals(objective, model, batches, device, precision)
    metrics = {**evaluation_metrics(totals, "test_"), "test_sequences": int(totals["sequences"]),
               "test_predictions": int(totals["mlm_count"]), "checkpoint": str(source),
               "checkpoint_step": state["iteration"]}
    if common_test_data:
        common = PackedSamples(common_test_data, tokenizer, TEST_MASK_RATE, TEST_MASK_SEED)
        if common_seq_length is not None and common.seq_length != common_seq_length:
            raise BertpipeError(f"--common-test-data holds packed sequences of {common.seq_length} tokens, not "
                                f"--common-seq-length {common_seq_length}; rebuild them (the tfrecords stage)")
        batches = (common.read(list(range(begin, min(begin + batch_size, len(common)))), 0)
                   for begin in range(0, len(common), batch_size))
        if not modern:  # BERT reads each document piece as a sequence of its own
            batches = map(packed_as_bert2019, batches)
        totals = evaluation_totals(objective, model, batches, device, precision)
        metrics |= {key: value for key, value in evaluation_metrics(totals, "test_common_").items() if "nsp" not in key}
        metrics["test_common_sequences"] = len(common)
    examples = packed_examples(model, samples, device) if modern else record_examples(model, samples, device)
    with torch.no_grad():
        rows = fill_mask_rows(examples, tokenizer)
    with atomic_file(fill_mask_out) as temp:
        temp.write_text(fill_mask_html(rows, f"{source}, step {state['iteration']}"))
    with atomic_file(out) as temp:
        temp.write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("%s: perplexity %.3f, masked-LM accuracy %.4f%s", source, metrics["test_perplexity"],
             metrics["test_mlm_accuracy"], f", next-sentence accuracy {metrics['test_nsp_accuracy']:.4f}"
             if "test_nsp_accuracy" in metrics else "")
    return metrics


def _spread(samples, count: int):
    """Indices of `count` samples spread over the split (samples side by side come from one document)."""
    return np.unique(np.linspace(0, len(samples) - 1, num=min(len(samples), count)).astype(np.int64))


def record_examples(model, samples, device, count: int = 2 * FILL_MASK_EXAMPLES):
    """bert2019's fill-mask examples: test records with their true tokens put back, (ids, real length, the
    positions its mask predicts, predict(ids, position) -> logits)."""
    import torch

    spread = _spread(samples, count)
    batch = samples.read(spread)
    for record in range(len(spread)):
        ids = batch["input_ids"][record].clone()
        weights = batch["masked_lm_weights"][record] > 0
        positions = batch["masked_lm_positions"][record][weights]
        ids[positions] = batch["masked_lm_ids"][record][weights]  # the record as written, before masking
        segments, mask = batch["segment_ids"][record][None].to(device), batch["input_mask"][record][None].to(device)

        def predict(masked_ids, position, segments=segments, mask=mask):
            logits, _ = model(masked_ids[None].to(device), segments, mask, torch.tensor([[position]], device=device))
            return logits[0, 0]

        yield ids, int(batch["input_mask"][record].sum()), [int(p) for p in positions], predict


def packed_examples(model, samples, device, count: int = 2 * FILL_MASK_EXAMPLES):
    """modern's fill-mask examples: the longest document piece of each of some test sequences, alone, (ids, length,
    the positions the test set's mask predicts in it, predict(ids, position) -> logits)."""
    import torch

    for index in _spread(samples, count).tolist():
        sample = samples.read([index], 0)
        tokens, predicted = sample["input_ids"], sample["masked_positions"]
        tokens[predicted] = sample["masked_lm_ids"]  # the sequence as written, before masking
        pieces = sample["document_lengths"]
        ends = pieces.cumsum(0)
        longest = int(pieces.argmax())
        begin, end = int(ends[longest] - pieces[longest]), int(ends[longest])
        ids = tokens[begin:end]

        def predict(masked_ids, position):
            return model(masked_ids.to(device), [len(masked_ids)], torch.tensor([position], device=device))[0]

        yield ids, len(ids), [int(p) - begin for p in predicted.tolist() if begin <= p < end], predict


def fill_mask_rows(examples, tokenizer, count: int = FILL_MASK_EXAMPLES) -> list:
    """What the model fills in, on `count` of `examples` (record_examples, packed_examples): in each, one ordinary
    token of those its mask predicts masked, as HuggingFace's fill-mask pipeline asks. Rows of {"left", "right": the
    text around the mask, "true": the token, "predictions": [(token, probability)] x TOP_K}."""
    special = {tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id}
    rows = []
    for ids, length, positions, predict in examples:
        ids = ids.clone()
        ordinary = [p for p in positions if int(ids[p]) not in special]
        # A whole word reads best (not "arr[MASK]ed"): a word start followed by one; else any ordinary token.
        whole = [p for p in ordinary if tokenizer.is_word_start[int(ids[p])]
                 and (p + 1 >= length or tokenizer.is_word_start[int(ids[p + 1])])]
        masked = (whole or ordinary or [None])[0]
        if masked is None:
            continue
        true_id = int(ids[masked])
        ids[masked] = tokenizer.mask_id
        top = predict(ids, masked).float().softmax(-1).cpu().topk(TOP_K)

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
    parser.add_argument("--common-test-data", nargs="+",
                        help="the common test set: packed TFRecords of the test split (tfrecords pack), scored under "
                             "one fixed 15%% mask whatever the recipe")
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
                       args.precision, args.common_test_data, args.common_seq_length)
    return Outcome(metrics=metrics, tags={"checkpoint": metrics["checkpoint"]},
                   artifacts=[(args.out, None), (args.fill_mask, None)])
