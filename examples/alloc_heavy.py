"""An allocation-heavy Python script for `heapkeep run` (the README's demo):
builds and drops dictionaries, lists and strings, and round-trips JSON."""
import collections
import json

index = {}
for i in range(300_000):
    index[f"key-{i}"] = [i] * (i % 9)
words = collections.Counter(str(i * 7919 % 5000) for i in range(400_000))
text = json.dumps({k: index[k] for k in list(index)[:20_000]})
back = json.loads(text)
lines = "\n".join(f"{i}:{'x' * (i % 50)}" for i in range(200_000)).split("\n")
print(len(index), sum(map(len, index.values())), len(words), len(back), len(lines))
