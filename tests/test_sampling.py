from collections import Counter

import pytest

from common.chunks import check_chunks, iter_chunks
from common.data.datasets import VideoRecord
from common.data.samples import EpochSampler, ShardSampler
from common.errors import DatasetLayoutError
from common.losses import class_weights_from_counts


def test_epoch_sampler_is_a_permutation_and_changes_per_epoch():
    s = EpochSampler([0, 1] * 10, seed=3)
    s.set_epoch(0)
    first = [i for i, _ in s]
    assert sorted(first) == list(range(20))
    s.set_epoch(1)
    assert [i for i, _ in s] != first
    s.set_epoch(0)
    assert [i for i, _ in s] == first  # same seed and epoch, same order


def test_ranks_partition_the_epoch_and_agree_on_length():
    labels = [0, 1, 1] * 7  # 21 items over 2 ranks: padded to 22
    ranks = [EpochSampler(labels, seed=0, rank=r, world=2) for r in range(2)]
    for s in ranks:
        s.set_epoch(5)
    items = [list(s) for s in ranks]
    assert len(items[0]) == len(items[1]) == 11
    seen = [i for part in items for i, _ in part]
    assert set(seen) == set(range(21))
    seeds = [seed for part in items for _, seed in part]
    assert len(set(seeds)) == len(seeds)  # every draw gets its own augmentation seed


def test_skip_resumes_mid_epoch_with_the_same_items_and_seeds():
    s = EpochSampler(list(range(2)) * 8, seed=1)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, skip=6)
    assert list(s) == full[6:] and len(s) == len(full) - 6


def test_balanced_sampler_draws_classes_equally():
    labels = [0] * 20 + [1] * 180
    s = EpochSampler(labels, seed=0, balanced=True)
    s.set_epoch(0)
    counts = Counter(labels[i] for i, _ in s)
    assert 0.4 < counts[0] / len(labels) < 0.6


def test_shard_sampler_has_no_padding():
    parts = [list(ShardSampler(5, r, 2)) for r in range(2)]
    assert parts == [[0, 2, 4], [1, 3]]


def _rec(name, label, chunk, split="train"):
    return VideoRecord(path=f"/x/{name}", rel=f"dfdc_train_part_{chunk}/{name}", label=label, group=name,
                       split=split, has_audio=True, source=None, chunk=chunk)


def test_chunks_come_in_order_with_their_own_weights_and_resume_position():
    recs = [_rec("a.mp4", 0, 9), _rec("b.mp4", 1, 9), _rec("c.mp4", 1, 9), _rec("d.mp4", 1, 9),
            _rec("e.mp4", 0, 8), _rec("f.mp4", 1, 8), _rec("g.mp4", 0, 8, split="val")]
    chunks = list(iter_chunks(recs, [9, 8]))
    assert [(c.number, c.position) for c in chunks] == [(9, 0), (8, 1)]
    assert chunks[0].class_counts == (1, 3) and chunks[1].class_counts == (1, 1)
    w9 = class_weights_from_counts(chunks[0].class_counts).tolist()
    assert w9[0] > w9[1]  # the rarer class (real) weighs more
    assert class_weights_from_counts(chunks[1].class_counts).tolist() == pytest.approx([1.0, 1.0])


def test_missing_chunk_is_an_error_or_a_warning(caplog):
    with pytest.raises(DatasetLayoutError, match="dfdc_train_part_3"):
        check_chunks([9, 3], available=[9, 8], skip_missing=False)
    assert check_chunks([9, 3], available=[9, 8], skip_missing=True) == [9]
    assert "dfdc_train_part_3" in caplog.text


@pytest.mark.parametrize("seed", [1125899906842624, 2**70 + 5])
def test_a_huge_seed_gives_an_order_and_augmentation_seeds(seed):
    labels = [0, 1, 0, 1, 1, 0]
    big = list(EpochSampler(labels, seed=seed))
    small = list(EpochSampler(labels, seed=42))
    assert len(big) == len(small) == 6 and sorted(i for i, _ in big) == sorted(range(6))
    assert all(0 <= s < 2**63 for _, s in big) and big != small
