# Allocation-heavy Python workload for the preload benchmark: dicts, lists,
# strings and json. Deterministic (run with PYTHONHASHSEED=0); prints a
# short digest of what it built, which must not depend on the allocator.
import hashlib
import json
import random


def records(rng, n):
    out = []
    for i in range(n):
        out.append({
            "id": i,
            "name": "user-%06d" % rng.randrange(1_000_000),
            "tags": [("t%d" % rng.randrange(50)) for _ in range(rng.randrange(1, 8))],
            "score": round(rng.random() * 1000, 3),
            "bio": "lorem ipsum " * rng.randrange(1, 60),
        })
    return out


def word_counts(rng, n):
    words = ["w%d" % i for i in range(5000)]
    counts = {}
    for _ in range(n):
        w = words[int(rng.paretovariate(1.2)) % len(words)]
        counts[w] = counts.get(w, 0) + 1
    return counts


def main():
    rng = random.Random(12345)
    digest = hashlib.sha256()
    total = 0
    for rep in range(5):
        recs = records(rng, 15_000)
        text = json.dumps(recs, sort_keys=True)
        back = json.loads(text)
        assert back == recs
        digest.update(text.encode())
        # Index by tag: many small lists growing inside a dict.
        by_tag = {}
        for r in back:
            for t in r["tags"]:
                by_tag.setdefault(t, []).append(r["id"])
        total += sum(len(v) for v in by_tag.values())
        # String building and splitting.
        lines = ["%d,%s,%s" % (r["id"], r["name"], r["bio"].upper()) for r in back]
        blob = "\n".join(lines)
        parts = blob.split(",")
        total += len(parts) + len(blob)
        digest.update(blob[-1000:].encode())
        # A big dict of dicts, sorted, then dropped.
        counts = word_counts(rng, 150_000)
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:20]
        digest.update(repr(top).encode())
        nested = {k: {"n": v, "sq": [v * j for j in range(8)]} for k, v in counts.items()}
        total += sum(d["sq"][-1] for d in nested.values())
        del recs, back, text, lines, blob, parts, nested, by_tag
    print("python", total, digest.hexdigest()[:32])


main()
