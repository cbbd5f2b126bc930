"""Training: a point-in-time training set from Feast's offline store, the
behaviour encoder trained and registered in MLflow, and the champion alias."""

import time
from contextlib import nullcontext
from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from dagster import (
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)

from feature_repo.data_sources import ITEM_CONTENT_FILE
from feature_repo.feature_services import BEHAVIOUR_ENCODER_SERVICE
from feature_repo.recent_items import feature_times
from feature_repo.store import historical_features
from infra.engine import engine
from infra.fingerprint import file_sha256, tree_sha256
from orchestration.offline import EVENT_FIELDS, read_validated_events
from orchestration.resources import FeatureStoreResource, MlflowResource, RecsysState
from training import ann, registry
from training.cold_start import cold_items_from_text, evaluate_cold_start
from training.evaluate import (
    ease_baseline,
    evaluate,
    evaluated_users,
    interaction_counts,
    popularity_scorer,
)
from training.model import EncoderConfig
from training.query import evaluate_query, genre_query, model_blends
from training.sequences import (
    ItemIndex,
    evaluation_split,
    histories_from_training_set,
    training_targets,
)
from training.text_encoder import TextEncoder
from training.train import TrainConfig, model_scorer, train_encoder, validation_sample


@asset(group_name="training", deps=["online_user_features", "validated_events"])
def training_set(state: RecsysState, feature_store: FeatureStoreResource) -> MaterializeResult:
    """Point-in-time training rows: user_recent_items as of just before each target event."""
    settings = state.settings()
    events = read_validated_events(settings)
    entity = training_targets(events, feature_times(events), max_len=settings.recent_items)
    store = feature_store.store()
    with engine(settings) as runner:
        frame, blocks = historical_features(store, entity, BEHAVIOUR_ENCODER_SERVICE,
                                            "user_id", engine=runner)
    frame = frame.sort_values(["user_id", "event_timestamp"]).reset_index(drop=True)
    frame.to_parquet(settings.training_set_path, index=False)
    return MaterializeResult(metadata={
        "row_count": len(frame), "users": int(frame["user_id"].nunique()),
        "feature_service": BEHAVIOUR_ENCODER_SERVICE,
        "rows_without_history": int(frame["recent_item_ids"].isna().sum()),
        "joins": blocks, "engine": settings.engine,
    })


class EncoderTraining(Config):
    """Hyper-parameters (defaults suit the built-in data and MovieLens-100K; each
    default was chosen on validation: docs/models.md, docs/experiments.md)."""

    epochs: int = 85
    # Validation NDCG@10 of the weight average can plateau for 10-20 epochs before
    # it climbs again, so patience outlasts a plateau.
    patience: int = 25
    # Wall-clock training budget (0: none): no epoch starts that would end past it.
    max_train_seconds: float = 290.0
    batch_size: int = 32
    learning_rate: float = 2e-3
    hidden: int = 64
    layers: int = 2
    heads: int = 1
    dropout: float = 0.5
    # Cosine scores / temperature (0: dot products).
    temperature: float = 0.05
    seed: int = 42
    threads: int = 2
    # Sampled softmax, this many uniform negatives shared by a batch, from
    # ``sampled_softmax_min_items`` catalogue items on (a full softmax below: on
    # MovieLens-size catalogues it is cheap). A uniform proposal needs no log-Q
    # correction.
    sampled_negatives: int = 1024
    sampled_softmax_min_items: int = 20_000
    # Validate and keep an exponential moving average of the weights (decay per
    # batch; 0: the latest weights), and smooth the targets.
    ema_decay: float = 0.998
    label_smoothing: float = 0.2
    # A learned vector per training user, added to the encoder's input (the whole
    # history's signal beyond the last max_len items), left out of this share of
    # the training windows so that new users are served well.
    user_vectors: bool = True
    user_dropout: float = 0.5
    # Item-to-item transition counts at lags 1..3 of the training histories, and
    # item popularity, blended into the scores with weights chosen on validation
    # (0: none).
    transition_lags: int = 3
    # Each epoch the training histories are cut into windows from a random offset,
    # not the same windows every epoch, so a target is seen after other contexts.
    random_tiling: bool = True
    # Validation while training (the checkpoint, the blend weights) on this many
    # users drawn once, then the chosen model on every user once; catalogues of
    # MovieLens size have fewer users, so all are validated each epoch.
    validation_users: int = 5000
    # Processes training data-parallel (training.parallel), on this machine or,
    # with RECSYS_ENGINE=ray, the others as Ray tasks: each takes its share of
    # every batch of ``batch_size``, with ``threads`` threads.
    workers: int = 1

    def configs(self, n_items: int, max_len: int) -> tuple[EncoderConfig, TrainConfig]:
        return (EncoderConfig(n_items=n_items, max_len=max_len, hidden=self.hidden,
                              layers=self.layers, heads=self.heads, dropout=self.dropout,
                              temperature=self.temperature, user_dropout=self.user_dropout),
                TrainConfig(epochs=self.epochs, batch_size=self.batch_size,
                            learning_rate=self.learning_rate, patience=self.patience,
                            seed=self.seed, threads=self.threads,
                            max_seconds=self.max_train_seconds,
                            sampled_negatives=self.sampled_negatives
                            if n_items >= self.sampled_softmax_min_items else 0,
                            ema_decay=self.ema_decay, label_smoothing=self.label_smoothing,
                            user_vectors=self.user_vectors,
                            transition_lags=self.transition_lags,
                            random_tiling=self.random_tiling,
                            validation_users=self.validation_users, workers=self.workers))


def logged_recipe(params: dict[str, str]) -> EncoderTraining:
    """The hyper-parameters a run logged (MLflow keeps them as strings), as the
    ``EncoderTraining`` that trained it."""
    def parsed(text: str, default):
        if isinstance(default, bool):  # bool("False") is True
            return text == "True"
        return type(default)(text)
    return EncoderTraining(**{name: parsed(params[name], default)
                              for name, default in EncoderTraining().__dict__.items()
                              if name in params})


TEXT_BATCH_ROWS = 65_536  # item text rows read at once


def item_text_table(settings, index: ItemIndex) -> np.ndarray:
    """(N + 1, T) text embeddings by model index from the offline ``item_content``
    table; zero rows for padding and for items without one. Read in batches
    straight into the table: a million items' vectors are 1.5 GB, and the whole
    column read at once (with its copies) would hold several times that on top of
    training's data."""
    table = None
    # a buffered stream, not the whole column chunk read ahead (one chunk holds
    # every row of a file written at once)
    source = pq.ParquetFile(settings.offline_dir / ITEM_CONTENT_FILE, buffer_size=1 << 22,
                            pre_buffer=False)
    for batch in source.iter_batches(batch_size=TEXT_BATCH_ROWS,
                                     columns=["item_id", "text_embedding"]):
        embeddings = batch.column("text_embedding")
        if not len(embeddings):
            continue
        dim = len(embeddings[0])
        if table is None:
            table = np.zeros((len(index) + 1, dim), dtype=np.float32)
        vectors = pc.list_flatten(embeddings).to_numpy().reshape(len(embeddings), dim)
        rows = np.array([index.index.get(item, -1) for item in batch.column("item_id")
                         .to_pylist()], dtype=np.int64)
        known = rows >= 0
        table[rows[known]] = vectors[known]
    if table is None:
        raise ValueError(f"{settings.offline_dir / ITEM_CONTENT_FILE} holds no item text")
    return table


@asset(group_name="training", deps=["training_set", "item_catalogue", "item_content_offline"])
def behaviour_encoder_version(context: AssetExecutionContext, config: EncoderTraining,
                              state: RecsysState, mlflow: MlflowResource) -> MaterializeResult:
    """The behaviour encoder trained, evaluated (protocol of DESIGN.md) and
    registered in MLflow as a new version with alias ``challenger``."""
    started = time.time()
    settings = state.settings()
    events = read_validated_events(settings, columns=EVENT_FIELDS)
    items = pd.read_parquet(settings.items_path)
    frame = pd.read_parquet(settings.training_set_path)
    index = ItemIndex(items["item_id"].tolist())
    split = evaluation_split(events, evaluated_users(settings.evaluation_users, len(index)))
    histories, users = histories_from_training_set(frame, index)
    model_config, train_config = config.configs(len(index), settings.recent_items)
    # With RECSYS_ENGINE=ray the other training processes are Ray tasks.
    on_ray = train_config.workers > 1 and settings.engine == "ray"
    train_config = replace(train_config, workers_on_ray=on_ray)
    with engine(settings) if on_ray else nullcontext():
        result = train_encoder(
            histories, split, index, items["title"].tolist(), model_config, train_config,
            on_epoch=lambda e, m: context.log.info(f"epoch {e}: {m}"), users=users)
    # Items without training interactions get their vector from their text.
    content = item_text_table(settings, index)
    cold_filled = cold_items_from_text(result.model, content, split, index,
                                       train_config)
    query_started = time.perf_counter()
    query_blend, query_metrics = _query_evaluation(
        mlflow.tracking_uri, result.model, split, index, items, content,
        validation_sample(split, len(index), train_config))
    metrics = {**_test_metrics(result, split, index), **query_metrics,
               "query_seconds": time.perf_counter() - query_started,
               "cold_items_from_text": cold_filled, "search_seconds": result.search_seconds}
    params = {**result.model.config.to_dict(), **train_config.to_dict(),
              # the recipe as configured (``logged_recipe`` reads it back), and what
              # it chose for this catalogue
              "sampled_negatives": config.sampled_negatives,
              "sampled_softmax_min_items": config.sampled_softmax_min_items,
              "softmax": "sampled" if train_config.sampled_negatives else "full",
              "training_rows": len(frame), "torch": torch.__version__,
              # at most this many users validated and tested (a sample above it)
              "evaluation_users": evaluated_users(settings.evaluation_users, len(index)),
              "stopped_by": result.stopped_by}
    context.log.info(f"training stopped by {result.stopped_by} after epoch "
                     f"{len(result.history)} ({result.train_seconds:.0f} s; budget "
                     f"{train_config.max_seconds:.0f} s); blend search and validation "
                     f"{result.search_seconds:.0f} s")
    # Released before the index build and registration, which add the serialised
    # model on top: at a million items and users these hold GBs.
    del frame, histories, users, split, content
    if len(index) >= settings.ann_min_items:
        # The two-stage path's item index, cold items' vectors included, is built
        # once here and registered with the weights (training.ann).
        result.model.ann = ann.build(result.model)
        params |= result.model.ann.params.logged()
        metrics["ann_build_seconds"] = result.model.ann.params.build_seconds
    registered = registry.log_and_register(
        mlflow.tracking_uri, mlflow.artifact_location, result.model, params, result.history,
        metrics, _lineage_tags(context, settings, events), documents={
            **_popularity(events), registry.QUERY_BLEND_DOCUMENT: query_blend.to_dict(),
            registry.EVENT_RULES_DOCUMENT:
            state.open_source().rules(settings.future_tolerance_s,
                                     settings.pseudonymise).to_dict()},
        inputs=[(events, "validated_events", str(settings.validated_events_dir), "training")],
        started_at=started)
    return MaterializeResult(metadata={
        "version": registered.version, "run_id": registered.run_id,
        "stopped_by": result.stopped_by, "item_index": "ann_kind" in params,
        **{k: round(float(v), 4) for k, v in metrics.items()},
    })


def _test_metrics(result, split, index: ItemIndex) -> dict[str, float]:
    """Test, computed once after the checkpoint was chosen on validation, with the
    popularity and EASE baselines on the same split, and the validation figures."""
    test = evaluate(model_scorer(result.model), split, index, "test")
    popularity = popularity_scorer(split, index)
    pop_test = evaluate(popularity, split, index, "test")
    pop_val = evaluate(popularity, split, index, "validation")
    return {
        **test,
        **ease_baseline(split, index),
        **{f"baseline_pop_{name}": pop_test[name]
           for name in ("ndcg_at_10", "hr_at_10", "mrr", "coverage_at_10")},
        "best_val_ndcg_at_10": result.validation["val_ndcg_at_10"],
        "best_val_hr_at_10": result.validation["val_hr_at_10"],
        "val_baseline_pop_ndcg_at_10": pop_val["ndcg_at_10"],
        "best_epoch": result.best_epoch,
        "train_seconds": result.train_seconds,
        "evaluated_users": len(split.validation),
        # The blend weights of the item transitions and of popularity chosen on
        # validation (0: none).
        "transition_weight": getattr(result.model.transitions, "weight", 0.0),
        "popularity_weight": getattr(result.model.transitions, "popularity_weight", 0.0),
        # how much of their text neighbours' transition score cold items take
        "borrowed_transition_weight": getattr(result.model.transitions, "borrowed_weight", 1.0),
    }


def _query_evaluation(tracking_uri: str, model, split, index: ItemIndex, items: pd.DataFrame,
                      content: np.ndarray, validation):
    """The query blend chosen on ``validation`` (the users the behaviour blend
    was chosen on) and its three-way test metrics on ``split``
    (``training.query.evaluate_query``), queries embedded by the registered
    ``item_text_encoder``."""
    version = registry.alias_version(tracking_uri, registry.CHAMPION, registry.TEXT_MODEL_NAME)
    encoder = TextEncoder(registry.text_encoder_dir(tracking_uri, version))
    queries = dict(zip(items["item_id"], items["genres"].map(genre_query), strict=True))
    counts = interaction_counts(split, index)
    return evaluate_query(model_scorer(model), model_blends(model), split, index, content,
                          encoder.encode, queries, counts, validation)


def _lineage_tags(context: AssetExecutionContext, settings, events: pd.DataFrame,
                  ) -> dict[str, str]:
    """What the run and the registered version were made from (``recsys lineage``)."""
    return {"feature_service": BEHAVIOUR_ENCODER_SERVICE, "dagster_run_id": context.run_id,
            "source": str(settings.source or "generator"),
            "validated_events_sha256": tree_sha256(settings.validated_events_dir),
            "training_set_sha256": file_sha256(settings.training_set_path),
            registry.TRAINED_UNTIL_TAG: events["event_timestamp"].max().isoformat()}


def _popularity(events: pd.DataFrame) -> dict[str, dict]:
    """Item counts, all time and over the last RECENT_POPULARITY_DAYS: the serving
    fallback's order."""
    newest = events["event_timestamp"].max()
    recent = events.loc[events["event_timestamp"] > newest - pd.Timedelta(
        days=registry.RECENT_POPULARITY_DAYS), "item_id"].value_counts()
    return {registry.POPULARITY_DOCUMENT: events["item_id"].value_counts().astype(int).to_dict(),
            registry.RECENT_POPULARITY_DOCUMENT: recent.astype(int).to_dict()}


@asset(group_name="training", deps=["behaviour_encoder_version"])
def champion_model(context: AssetExecutionContext, mlflow: MlflowResource) -> MaterializeResult:
    """The served model: ``champion`` moves to the challenger. Runs only after the
    blocking check ``challenger_beats_champion`` passed for it."""
    uri = mlflow.tracking_uri
    challenger = registry.alias_version(uri, registry.CHALLENGER)
    previous = registry.alias_version(uri, registry.CHAMPION)
    registry.set_champion(uri, challenger)
    context.log.info(f"champion: v{previous} -> v{challenger}" if previous
                     else f"champion: v{challenger} (the first)")
    return MaterializeResult(metadata={
        "champion": challenger, "previous_champion": str(previous),
        "promoted": challenger != previous,
        "history": MetadataValue.json(registry.champion_history(uri)),
    })


class ColdStartEvaluation(Config):
    """Share of the catalogue held out of the training interactions, and the
    draws: ``draws`` of them, seeds ``seed``, ``seed + 1``, ... (each trains the
    recipe again; pooled, with the lift's interval)."""

    held_out_fraction: float = 0.1
    seed: int = 7
    draws: int = 1


def cold_start_of_recipe(settings, params: dict[str, str], fraction: float,
                         seeds: tuple[int, ...], max_train_seconds: float | None = None,
                         ) -> dict[str, float]:
    """``evaluate_cold_start`` of the recipe a run logged (``params``) on the
    pipeline's state, optionally with another training budget."""
    events = read_validated_events(settings)
    items = pd.read_parquet(settings.items_path)
    index = ItemIndex(items["item_id"].tolist())
    split = evaluation_split(events, evaluated_users(settings.evaluation_users, len(index)))
    histories, users = histories_from_training_set(
        pd.read_parquet(settings.training_set_path), index)
    recipe = logged_recipe(params)
    if max_train_seconds is not None:
        recipe = EncoderTraining(**{**recipe.__dict__, "max_train_seconds": max_train_seconds})
    model_config, train_config = recipe.configs(len(index), int(params["max_len"]))
    return evaluate_cold_start(histories, users, split, index, items["title"].tolist(),
                               item_text_table(settings, index), model_config, train_config,
                               fraction, seeds)


@asset(group_name="training", deps=["behaviour_encoder_version"])
def cold_start_evaluation(context: AssetExecutionContext, config: ColdStartEvaluation,
                          state: RecsysState, mlflow: MlflowResource) -> MaterializeResult:
    """Cold-start quality of the challenger's recipe: the same hyper-parameters,
    trained with ``held_out_fraction`` of the items held out of the training
    interactions (kept in the catalogue with their text); HR@10 on the test events
    of those items against a random ranking, logged on the challenger's run."""
    uri = mlflow.tracking_uri
    version = registry.alias_version(uri, registry.CHALLENGER)
    run = registry.version_run(uri, version)
    metrics = cold_start_of_recipe(state.settings(), run.data.params, config.held_out_fraction,
                                   tuple(range(config.seed, config.seed + config.draws)))
    context.log.info(f"cold start: {metrics}")
    registry.log_metrics_to_run(uri, run.info.run_id, metrics)
    return MaterializeResult(metadata={
        "challenger": version,
        **{k: round(float(v), 4) for k, v in metrics.items()}})
