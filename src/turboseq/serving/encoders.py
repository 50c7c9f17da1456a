"""The encoder tasks: sentence embeddings and sequence classification (cross-encoders and re-rankers included).

``POST /`` speaks the Hugging Face Inference API's format (feature extraction and sentence similarity for an
embedding model, text classification for a classifier), which ``huggingface_hub.InferenceClient`` sends to a
URL. The routes of OpenAI (``/v1/embeddings``) and text-embeddings-inference (``serving.tei``) queue the same
engine batches. A batch runs one kind of output (``EncoderRequest.output``): pooled vectors, every token's
state, or the classifier's logits; scores, cosines and shortened vectors are made from them per request.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from turboseq.errors import InputTooLong
from turboseq.formats.tokenizer import encode_pairs
from turboseq.models.encoder import EncoderModel
from turboseq.serving import tei
from turboseq.serving.requests import (
    Parsed,
    Prepared,
    check_json_content_type,
    decode_json,
    invalid,
    json_fields,
    text_list,
)
from turboseq.serving.tasks import Route, Task, doubling, register
from turboseq.serving.tei import cosines, shortened
from turboseq.serving.text import TextTask, too_long, truncation_of, truncation_side, truncation_side_of

# parameters that only shape tokenizing (read by ``TextTask.tokenize``, before ``prepare``)
TOKENIZING = {"truncation", "truncate", "truncation_direction"}
# feature extraction's parameters as the Inference API's spec places them: beside ``inputs``
ROOT_PARAMETERS = ("normalize", "truncate", "truncation_direction", "dimensions", "prompt_name", "encoding_format")


@dataclass(frozen=True)
class EncoderRequest:
    """What an encoder batch computes: ``pooled`` vectors (``normalize``d or not), every token's ``states``, or
    the classifier's ``logits``."""

    output: str = "pooled"
    normalize: bool = False

    def key(self) -> str:
        return json.dumps([self.output, self.normalize])


class Segmented(list):
    """A row of token ids that also carries each token's segment (a sentence pair, for BERT's segment
    embeddings); to the batcher it is a list of ids like any row."""

    def __init__(self, ids, segments):
        super().__init__(ids)
        self.segments = list(segments)


class EncoderTask(TextTask[EncoderRequest]):
    def run(self, rows, request: EncoderRequest, abandoned=None, on_tokens=None):
        if request.output == "states":
            return [t.tolist() for t in self.model.token_states_ids(rows)], 0
        if request.output == "logits":
            segments = None  # every row in segment 0, unless the batch holds pairs
            if any(isinstance(r, Segmented) for r in rows):
                segments = [r.segments if isinstance(r, Segmented) else [0] * len(r) for r in rows]
            return self.model.class_logits_ids(rows, segments=segments).tolist(), 0
        return self.model.embed_ids(rows, normalize=request.normalize).tolist(), 0

    def empty(self, request: EncoderRequest):
        return []

    @staticmethod
    def body(raw: bytes, content_type: str, limit: int, root: tuple[str, ...] = ()) -> tuple[object, dict]:
        """``{"inputs", "parameters"}``: the inputs as sent and the parameters, with any of ``root`` given beside
        ``inputs`` taken as parameters too."""
        check_json_content_type(content_type)
        body = json_fields(decode_json(raw, limit), {"inputs", "parameters", *root}, "inputs")
        params = body.get("parameters")
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise invalid("`parameters` must be a JSON object")
        return body["inputs"], {**params, **{k: body[k] for k in root if body.get(k) is not None}}

    def check_prompt(self, params: dict) -> None:
        if params.get("prompt_name") is not None:
            raise invalid("`prompt_name`: this model defines no prompts")

    def tokenize_pairs(self, pairs: list[tuple[str, str]], params: dict) -> Parsed:
        """A row per (text, text pair), joined as the tokenizer joins a pair, with its segments."""
        truncation, left = truncation_of(params), truncation_side_of(params) == "left"
        try:
            with self.tokenizer_lock, truncation_side(self.model.tokenizer, left):
                ids, segments = encode_pairs(self.model.tokenizer, pairs, self.max_input_tokens, truncation)
        except InputTooLong as err:
            raise too_long(err) from None
        rows = [Segmented(i, s) for i, s in zip(ids, segments)]
        return Parsed(rows, list(range(len(rows))), len(rows), params)

    def tokenize_items(self, items: list, params: dict) -> Parsed:
        """A row per item, a text or a (text, text pair), in order; blank texts included."""
        rows: list = [None] * len(items)
        singles = [i for i, item in enumerate(items) if isinstance(item, str)]
        pairs = [i for i, item in enumerate(items) if not isinstance(item, str)]
        if singles:
            for i, row in zip(singles, self.tokenize([items[i] for i in singles], params, keep_blank=True).rows):
                rows[i] = row
        if pairs:
            for i, row in zip(pairs, self.tokenize_pairs([items[i] for i in pairs], params).rows):
                rows[i] = row
        return Parsed(rows, list(range(len(items))), len(items), params)

    def routes(self) -> list[Route]:
        return [
            Route("/tokenize", lambda service, request: tei.tokenize(self, service, request)),
            Route("/decode", lambda service, request: tei.decode(self, service, request)),
        ]

    def warm(self, batch_size):
        row = self.warm_text()
        output = "logits" if self.model.spec.classifier is not None else "pooled"
        for n in doubling(batch_size):
            self.run([row] * n, EncoderRequest(output, self.model.spec.pooling.normalize))


class EmbeddingTask(EncoderTask):
    """Sentence embeddings: ``[[float, ...], ...]``; sentence similarity for ``{"source_sentence", "sentences"}``
    inputs; OpenAI's ``/v1/embeddings``; text-embeddings-inference's ``/embed``, ``/embed_all``, ``/similarity``."""

    name = "feature-extraction"

    def parse(self, raw: bytes, content_type: str, limit: int) -> Parsed:
        """``{"inputs", "parameters"}``; feature extraction's parameters may also sit beside ``inputs``, as
        ``InferenceClient`` and TEI's ``/embed`` send them."""
        value, params = self.body(raw, content_type, limit, ROOT_PARAMETERS)
        if isinstance(value, dict):  # sentence similarity
            return self.parse_similarity(value, params)
        inputs = text_list(value, "inputs")
        self.check_count(len(inputs))
        return self.tokenize(inputs, params, isinstance(value, str))

    def parse_similarity(self, inputs: dict, params: dict) -> Parsed:
        """The source sentence and the sentences to compare with it, as rows: one more row than sentences."""
        unknown = set(inputs) - {"source_sentence", "sentences"}
        if unknown or "source_sentence" not in inputs or "sentences" not in inputs:
            raise invalid('`inputs` for sentence similarity must be {"source_sentence": ..., "sentences": [...]}')
        source = text_list(inputs["source_sentence"], "source_sentence")
        if len(source) != 1 or not isinstance(inputs["source_sentence"], str):
            raise invalid("`source_sentence` must be a string")
        sentences = text_list(inputs["sentences"], "sentences")
        self.check_count(len(sentences) + 1)
        parsed = self.tokenize(source + sentences, params, keep_blank=True)
        parsed.options = {"similarity": True}
        return parsed

    def prepare(self, params, similarity: bool = False, output: str = "pooled") -> Prepared[EncoderRequest]:
        unknown = set(params) - TOKENIZING - {"normalize", "dimensions", "prompt_name", "encoding_format"}
        if unknown:
            raise ValueError(f"unknown parameter(s) for an embedding model: {', '.join(sorted(unknown))}")
        self.check_prompt(params)
        if params.get("encoding_format", "float") != "float":
            raise ValueError('`encoding_format` must be "float" here (base64 is for /v1/embeddings)')
        normalize = params.get("normalize", self.model.spec.pooling.normalize)
        if not isinstance(normalize, bool):
            raise ValueError("`normalize` must be a boolean")
        self.check_dimensions(params.get("dimensions"))
        request = EncoderRequest(output, True if similarity else normalize)
        return Prepared(request, request.key())

    def check_dimensions(self, dimensions) -> None:
        width = self.model.spec.d_model
        if dimensions is not None and (type(dimensions) is not int or not 1 <= dimensions <= width):
            raise ValueError(f"`dimensions` must be an integer from 1 to {width} (the model's size)")

    def respond(self, answers, parsed):
        if parsed.options.get("similarity"):
            return cosines(answers[0], answers[1:])
        dimensions = parsed.params.get("dimensions")
        if dimensions is not None:
            answers = [shortened(v, dimensions, parsed.prepared.settings.normalize) if v else v for v in answers]
        return answers

    def routes(self) -> list[Route]:
        return [
            Route("/v1/embeddings", lambda service, request: tei.openai_embeddings(self, service, request)),
            Route("/embed", lambda service, request: tei.embed(self, service, request)),
            Route("/embed_all", lambda service, request: tei.embed_all(self, service, request)),
            Route("/similarity", lambda service, request: tei.similarity(self, service, request)),
            *super().routes(),
        ]

    def info(self, service) -> dict:
        return tei.info(self, service, {"embedding": {"pooling": self.model.spec.pooling.mode}})


class ClassificationTask(EncoderTask):
    """Sequence classification (``*ForSequenceClassification``): ``[[{"label", "score"}, ...]]`` per input,
    best first, for a text or a ``{"text", "text_pair"}``; text-embeddings-inference's ``/predict`` and, for a
    model with one output (a re-ranker), ``/rerank``."""

    name = "text-classification"

    def parse(self, raw: bytes, content_type: str, limit: int) -> Parsed:
        inputs, params = self.body(raw, content_type, limit)
        items = inputs if isinstance(inputs, list) else [inputs]
        self.check_count(len(items))
        if not items or not all(isinstance(i, str) or isinstance(i, dict) for i in items):
            raise invalid('`inputs` must be a text, a {"text", "text_pair"} pair, or a non-empty list of them')
        parsed = self.tokenize_items([i if isinstance(i, str) else _text_pair(i) for i in items], params)
        parsed.single = not isinstance(inputs, list)
        return parsed

    def prepare(self, params, output: str = "logits") -> Prepared[EncoderRequest]:
        unknown = set(params) - TOKENIZING - {"top_k", "function_to_apply", "raw_scores", "prompt_name"}
        if unknown:
            raise ValueError(f"unknown parameter(s) for a classification model: {', '.join(sorted(unknown))}")
        self.check_prompt(params)
        top_k = params.get("top_k")
        if top_k is not None and (type(top_k) is not int or top_k < 1):
            raise ValueError("`top_k` must be a positive integer")
        if params.get("function_to_apply", "default") not in ("default", "softmax", "sigmoid", "none"):
            raise ValueError('`function_to_apply` must be "softmax", "sigmoid" or "none"')
        request = EncoderRequest("logits")
        return Prepared(request, request.key())

    def scores(self, logits: list[float], function: str = "default") -> list[float]:
        """transformers' pipeline rule: sigmoid for one output (or multi-label models), softmax otherwise."""
        if function == "default":
            multi = self.model.config.get("problem_type") == "multi_label_classification"
            function = "sigmoid" if len(logits) == 1 or multi else "softmax"
        if function == "sigmoid":
            return [1 / (1 + math.exp(-x)) for x in logits]
        if function == "softmax":
            top = max(logits)
            exps = [math.exp(x - top) for x in logits]
            return [e / sum(exps) for e in exps]
        return list(logits)

    def ranked(self, logits: list[float], function: str = "default", top_k: int | None = None) -> list[dict]:
        labels = self.model.spec.classifier.labels
        scored = sorted(zip(self.scores(logits, function), labels), key=lambda s: -s[0])
        return [{"label": label, "score": score} for score, label in scored[:top_k]]

    def respond(self, answers, parsed):
        function = parsed.params.get("function_to_apply", "default")
        return [self.ranked(a, function, parsed.params.get("top_k")) for a in answers]

    def routes(self) -> list[Route]:
        routes = [Route("/predict", lambda service, request: tei.predict(self, service, request))]
        if len(self.model.spec.classifier.labels) == 1:
            routes.append(Route("/rerank", lambda service, request: tei.rerank(self, service, request)))
        return routes + super().routes()

    def info(self, service) -> dict:
        labels = self.model.spec.classifier.labels
        if len(labels) == 1:
            kind = {"reranker": {"id2label": {"0": labels[0]}, "label2id": {labels[0]: 0}}}
        else:
            kind = {
                "classifier": {
                    "id2label": {str(i): label for i, label in enumerate(labels)},
                    "label2id": {label: i for i, label in enumerate(labels)},
                }
            }
        return tei.info(self, service, kind)


@register(EncoderModel)
def encoder_task(model, config=None) -> Task:
    """A model with a classification head is served as a classifier, any other encoder for its embeddings."""
    return (ClassificationTask if model.spec.classifier is not None else EmbeddingTask)(model, config)


def _text_pair(item: dict) -> tuple[str, str]:
    if set(item) != {"text", "text_pair"} or not all(isinstance(v, str) for v in item.values()):
        raise invalid('a text pair must be {"text": ..., "text_pair": ...} with two strings')
    return item["text"], item["text_pair"]
