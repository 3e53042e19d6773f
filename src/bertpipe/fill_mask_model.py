"""The registered model's code (MLflow "models from code"): the exported transformers folder as a fill-mask model.

MLflow copies this file into the model and runs it wherever the model is loaded or served (`mlflow.pyfunc.load_model`,
`mlflow models serve`), so it imports only MLflow and transformers, never bertpipe. The model answers a list of
sentences, each with one [MASK], with the top tokens for it and their probabilities; the weights and tokenizer load
from the model's own files, with no network (local_files_only).
"""

import mlflow
from mlflow.pyfunc import PythonModel

TOP_K = 5


class FillMask(PythonModel):
    def load_context(self, context):
        import transformers

        folder = context.artifacts["huggingface"]
        # BertForPreTraining's weights: the masked-LM head is BertForMaskedLM's, the next-sentence head is left out.
        model = transformers.AutoModelForMaskedLM.from_pretrained(folder, local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.pipeline = transformers.pipeline("fill-mask", model=model, tokenizer=tokenizer, top_k=TOP_K, device="cpu")

    def predict(self, context, model_input: list[str], params=None) -> list[dict[str, str | float | int]]:
        """One row per prediction: the sentence, the rank (1 = most probable), the token and its probability."""
        from mlflow.exceptions import MlflowException

        mask = self.pipeline.tokenizer.mask_token
        rows = []
        for sentence in model_input:
            if sentence.count(mask) != 1:
                raise MlflowException.invalid_parameter_value(
                    f"{sentence!r} has {sentence.count(mask)} {mask} tokens: give each sentence exactly one")
            for rank, guess in enumerate(self.pipeline(sentence), 1):
                rows.append({"sentence": sentence, "rank": rank, "token": guess["token_str"],
                             "score": float(guess["score"])})
        return rows


mlflow.models.set_model(FillMask())
