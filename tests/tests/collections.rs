//! The standard library's collections and smart pointers on heapkeep as the global allocator
//! (Vec, VecDeque, String, HashMap, BTreeMap/BTreeSet, BinaryHeap, LinkedList, Rc/Arc/Weak,
//! Box<dyn Trait>, format!, sorting, clones), each cross-checked against an independent
//! computation so that corrupted, lost or aliased memory shows up as a wrong answer.

use heapkeep::HeapKeep;
use heapkeep_tests::{assert_invariants, Pattern, Rng, KIB, MIB};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, LinkedList, VecDeque};
use std::rc::{Rc, Weak as RcWeak};
use std::sync::{Arc, Mutex, Weak};

#[global_allocator]
static GLOBAL: HeapKeep = HeapKeep;

/// A reference multiset: sorted copy of `v` computed with a counting map.
fn counts(v: &[u64]) -> BTreeMap<u64, usize> {
    let mut m = BTreeMap::new();
    for &x in v {
        *m.entry(x).or_insert(0) += 1;
    }
    m
}

#[test]
fn vec_growth_shrink_and_nesting() {
    let mut rng = Rng::new(1);
    let mut v: Vec<u64> = Vec::new();
    let mut sum = 0u64;
    for i in 0..200_000u64 {
        let x = rng.next_u64() >> 8;
        v.push(x ^ i);
        sum = sum.wrapping_add(x ^ i);
    }
    assert_eq!(v.iter().fold(0u64, |a, &b| a.wrapping_add(b)), sum);
    v.truncate(1000);
    v.shrink_to_fit();
    assert!(v.capacity() >= 1000);
    let mut rng2 = Rng::new(1);
    for (i, &x) in v.iter().enumerate() {
        assert_eq!(
            x,
            (rng2.next_u64() >> 8) ^ i as u64,
            "element {i} changed by shrink_to_fit"
        );
    }

    // Vec<Vec<u8>> of mixed sizes, grown in place one push at a time.
    let mut nested: Vec<Vec<u8>> = (0..500).map(|i| Vec::with_capacity(i % 7)).collect();
    for round in 0..200usize {
        for (i, inner) in nested.iter_mut().enumerate() {
            if (i + round) % 3 != 0 {
                inner.push((i * 31 + inner.len()) as u8);
            }
        }
    }
    for (i, inner) in nested.iter().enumerate() {
        for (j, &b) in inner.iter().enumerate() {
            assert_eq!(b, (i * 31 + j) as u8, "nested[{i}][{j}]");
        }
    }
    // A large Vec growing by doubling into huge territory, then checked.
    let pat = Pattern::new(3);
    let mut big: Vec<u8> = Vec::new();
    while big.len() < 20 * MIB {
        let chunk = pat.vec(251 * 1024);
        big.extend_from_slice(&chunk);
    }
    assert_eq!(pat.check_slice(&big), Ok(()));
    assert_invariants("vec test");
}

#[test]
fn vecdeque_wraparound() {
    let mut d: VecDeque<u32> = VecDeque::new();
    let mut model_front = 0u32; // values in the deque are model_front..model_back
    let mut model_back = 0u32;
    let mut rng = Rng::new(2);
    for _ in 0..100_000 {
        match rng.range(0, 3) {
            0 | 1 => {
                d.push_back(model_back);
                model_back += 1;
            }
            _ => {
                if let Some(x) = d.pop_front() {
                    assert_eq!(x, model_front);
                    model_front += 1;
                }
            }
        }
    }
    assert_eq!(d.len() as u32, model_back - model_front);
    assert!(d.iter().copied().eq(model_front..model_back));
    d.rotate_left(d.len() / 3);
    d.make_contiguous().sort_unstable();
    assert!(d.iter().copied().eq(model_front..model_back));
    d.shrink_to_fit();
    assert!(d.iter().copied().eq(model_front..model_back));
}

#[test]
fn strings_and_format() {
    let mut s = String::new();
    for i in 0..20_000 {
        s.push_str(&format!("{i:05}|"));
    }
    assert_eq!(s.len(), 20_000 * 6);
    for (i, part) in s.split('|').filter(|p| !p.is_empty()).enumerate() {
        assert_eq!(part.parse::<usize>().unwrap(), i);
    }
    let upper = "grüße, straße ".repeat(1000).to_uppercase();
    assert_eq!(upper.matches("GRÜSSE").count(), 1000);
    assert_eq!(upper.to_lowercase().matches("grüsse").count(), 1000);
    let words: Vec<String> = (0..5000).map(|i| format!("w{}", i * 7 % 5000)).collect();
    let joined = words.join(" ");
    let back: Vec<&str> = joined.split(' ').collect();
    assert_eq!(back.len(), words.len());
    assert!(back.iter().zip(&words).all(|(a, b)| a == b));
    let mut chars: Vec<char> = joined.chars().collect();
    chars.reverse();
    let rev: String = chars.into_iter().collect();
    assert_eq!(rev.chars().rev().collect::<String>(), joined);
    let padded = format!("{:>width$}", "x", width = 60_000);
    assert_eq!(padded.len(), 60_000);
    assert!(padded.bytes().take(59_999).all(|b| b == b' ') && padded.ends_with('x'));
    let mut big = "ab".repeat(MIB);
    big.push_str(&padded);
    assert_eq!(big.len(), 2 * MIB + 60_000);
    assert!(big.as_bytes()[..2 * MIB].chunks(2).all(|c| c == b"ab") && big.ends_with(&padded));
}

#[test]
fn hashmap_against_btreemap() {
    let mut rng = Rng::new(4);
    let mut h: HashMap<String, Vec<u64>> = HashMap::new();
    let mut b: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for step in 0..60_000u64 {
        let key = format!("key-{}", rng.range(0, 5000));
        match rng.range(0, 9) {
            0..=5 => {
                let val: Vec<u64> = (0..rng.range(0, 40) as u64)
                    .map(|i| step * 100 + i)
                    .collect();
                assert_eq!(h.insert(key.clone(), val.clone()), b.insert(key, val));
            }
            6 | 7 => assert_eq!(h.remove(&key), b.remove(&key)),
            _ => {
                if let (Some(x), Some(y)) = (h.get_mut(&key), b.get_mut(&key)) {
                    x.push(step);
                    y.push(step);
                }
            }
        }
    }
    assert_eq!(h.len(), b.len());
    for (k, v) in &b {
        assert_eq!(h.get(k), Some(v), "key {k}");
    }
    h.retain(|k, _| k.ends_with('7'));
    b.retain(|k, _| k.ends_with('7'));
    let mut hk: Vec<&String> = h.keys().collect();
    hk.sort();
    assert!(hk.into_iter().eq(b.keys()));
    h.shrink_to_fit();
    assert!(b.iter().all(|(k, v)| h.get(k) == Some(v)));
}

#[test]
fn btree_range_and_set_algebra() {
    let mut rng = Rng::new(5);
    let xs: Vec<u64> = (0..30_000).map(|_| rng.next_u64() % 100_000).collect();
    let ys: Vec<u64> = (0..30_000).map(|_| rng.next_u64() % 100_000).collect();
    let a: BTreeSet<u64> = xs.iter().copied().collect();
    let b: BTreeSet<u64> = ys.iter().copied().collect();
    let ha: HashSet<u64> = xs.iter().copied().collect();
    let hb: HashSet<u64> = ys.iter().copied().collect();
    let inter: Vec<u64> = a.intersection(&b).copied().collect();
    let mut hinter: Vec<u64> = ha.intersection(&hb).copied().collect();
    hinter.sort_unstable();
    assert_eq!(inter, hinter);
    let uni: BTreeSet<u64> = a.union(&b).copied().collect();
    assert_eq!(uni.len(), ha.union(&hb).count());
    assert!(a.difference(&b).all(|x| !hb.contains(x) && ha.contains(x)));
    assert_eq!(a.len(), counts(&xs).len());

    let m: BTreeMap<u64, String> = a.iter().map(|&k| (k, k.to_string())).collect();
    let in_range: Vec<(&u64, &String)> = m.range(25_000..50_000).collect();
    assert_eq!(
        in_range.len(),
        a.iter().filter(|&&k| (25_000..50_000).contains(&k)).count()
    );
    assert!(in_range.iter().all(|(k, v)| k.to_string() == **v));
    let mut m2 = m.clone();
    let tail = m2.split_off(&50_000);
    assert!(m2.keys().all(|&k| k < 50_000) && tail.keys().all(|&k| k >= 50_000));
    assert_eq!(m2.len() + tail.len(), m.len());
    m2.extend(tail);
    assert_eq!(m2, m);
}

#[test]
fn binary_heap_and_sorting() {
    let mut rng = Rng::new(6);
    let v: Vec<u64> = (0..100_000).map(|_| rng.next_u64() % 1_000_000).collect();
    let reference = counts(&v);

    let mut heap: BinaryHeap<u64> = v.iter().copied().collect();
    let mut popped = Vec::with_capacity(v.len());
    while let Some(x) = heap.pop() {
        popped.push(x);
    }
    assert!(
        popped.windows(2).all(|w| w[0] >= w[1]),
        "BinaryHeap popped out of order"
    );
    assert_eq!(counts(&popped), reference);

    let mut stable = v.clone();
    stable.sort();
    let mut unstable = v.clone();
    unstable.sort_unstable();
    assert_eq!(stable, unstable);
    assert!(stable.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(counts(&stable), reference);
    popped.reverse();
    assert_eq!(popped, stable);

    // Stable sort of heap-owning keys: equal keys keep their original order.
    let mut recs: Vec<(String, usize)> = v
        .iter()
        .take(20_000)
        .enumerate()
        .map(|(i, x)| (format!("k{}", x % 100), i))
        .collect();
    recs.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(recs
        .windows(2)
        .all(|w| w[0].0 < w[1].0 || (w[0].0 == w[1].0 && w[0].1 < w[1].1)));
    recs.sort_by_cached_key(|r| std::cmp::Reverse(r.1));
    assert!(recs.iter().map(|r| r.1).eq((0..20_000).rev()));
    let mut d = stable.clone();
    d.dedup();
    assert_eq!(d.len(), reference.len());
}

#[test]
fn linked_list_split_append() {
    let mut l: LinkedList<Box<[u32]>> = LinkedList::new();
    for i in 0..10_000u32 {
        let node: Box<[u32]> = (0..i % 17).map(|k| i * 100 + k).collect();
        if i % 2 == 0 {
            l.push_back(node);
        } else {
            l.push_front(node);
        }
    }
    let mut tail = l.split_off(5000);
    assert_eq!(l.len() + tail.len(), 10_000);
    l.append(&mut tail);
    assert!(tail.is_empty());
    let mut seen: Vec<u32> = Vec::new();
    for node in &l {
        if let Some(&first) = node.first() {
            let i = first / 100;
            assert!(node
                .iter()
                .enumerate()
                .all(|(k, &x)| x == i * 100 + k as u32));
            seen.push(i);
        }
    }
    // Order: odd numbers descending, then even numbers ascending (nodes with i % 17 == 0 are empty).
    let expected: Vec<u32> = (0..10_000u32)
        .rev()
        .filter(|i| i % 2 == 1)
        .chain((0..10_000).filter(|i| i % 2 == 0))
        .filter(|i| i % 17 != 0)
        .collect();
    assert_eq!(seen, expected);
}

#[test]
fn rc_weak_drop_accounting() {
    thread_local!(static DROPS: Cell<usize> = const { Cell::new(0) });
    struct Node {
        value: usize,
        payload: Vec<u8>,
        children: RefCell<Vec<Rc<Node>>>,
        parent: RefCell<RcWeak<Node>>,
    }
    impl Drop for Node {
        fn drop(&mut self) {
            assert!(
                self.payload.iter().all(|&b| b == self.value as u8),
                "node {} payload corrupted",
                self.value
            );
            DROPS.with(|d| d.set(d.get() + 1));
        }
    }
    let root = Rc::new(Node {
        value: 0,
        payload: vec![0; 64],
        children: RefCell::new(vec![]),
        parent: RefCell::new(RcWeak::new()),
    });
    let mut all = vec![root.clone()];
    for i in 1..3000usize {
        let parent = all[(i * 7919) % all.len()].clone();
        let n = Rc::new(Node {
            value: i,
            payload: vec![i as u8; i % 300],
            children: RefCell::new(vec![]),
            parent: RefCell::new(Rc::downgrade(&parent)),
        });
        parent.children.borrow_mut().push(n.clone());
        all.push(n);
    }
    // Every node's parent link leads to the root.
    for n in &all {
        let mut cur = n.clone();
        let mut hops = 0;
        loop {
            let parent = cur.parent.borrow().upgrade();
            let Some(p) = parent else { break };
            cur = p;
            hops += 1;
            assert!(hops < 3000);
        }
        assert_eq!(cur.value, 0);
    }
    let weak_leaf = Rc::downgrade(&all[2999]);
    assert_eq!(Rc::strong_count(&all[2999]), 2);
    drop(all);
    assert_eq!(
        DROPS.with(Cell::get),
        0,
        "nodes dropped while still reachable from the root"
    );
    assert!(weak_leaf.upgrade().is_some());
    drop(root);
    assert_eq!(DROPS.with(Cell::get), 3000);
    assert!(weak_leaf.upgrade().is_none());
}

#[test]
fn arc_weak_across_threads() {
    let shared: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let weak: Weak<Mutex<Vec<String>>> = Arc::downgrade(&shared);
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let s = Arc::clone(&shared);
            std::thread::spawn(move || {
                for i in 0..2000 {
                    s.lock().unwrap().push(format!("t{t}-{i}"));
                }
                // Each thread also returns a big Arc for main to drop.
                Arc::new(vec![t as u8; 256 * KIB])
            })
        })
        .collect();
    let bigs: Vec<Arc<Vec<u8>>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (t, b) in bigs.iter().enumerate() {
        assert!(b.iter().all(|&x| x == t as u8));
    }
    drop(bigs);
    let mut v = shared.lock().unwrap().clone();
    v.sort();
    let mut expected: Vec<String> = (0..4)
        .flat_map(|t| (0..2000).map(move |i| format!("t{t}-{i}")))
        .collect();
    expected.sort();
    assert_eq!(v, expected);
    assert_eq!(Arc::strong_count(&shared), 1);
    assert!(weak.upgrade().is_some());
    drop(shared);
    assert!(weak.upgrade().is_none());
}

#[test]
fn boxed_trait_objects_of_many_sizes_and_alignments() {
    trait Shape {
        fn check(&self) -> u64;
        fn id(&self) -> u64;
    }
    #[repr(align(64))]
    struct A64(u64, [u8; 10]);
    #[repr(align(4096))]
    struct Page(u64, [u64; 3]);
    struct Big(u64, Box<[u64]>);
    struct Unit;
    impl Shape for A64 {
        fn check(&self) -> u64 {
            assert_eq!(self as *const _ as usize % 64, 0);
            assert!(self.1.iter().all(|&b| b == self.0 as u8));
            self.0
        }
        fn id(&self) -> u64 {
            self.0
        }
    }
    impl Shape for Page {
        fn check(&self) -> u64 {
            assert_eq!(self as *const _ as usize % 4096, 0);
            assert_eq!(self.1, [self.0; 3]);
            self.0
        }
        fn id(&self) -> u64 {
            self.0
        }
    }
    impl Shape for Big {
        fn check(&self) -> u64 {
            assert!(self
                .1
                .iter()
                .enumerate()
                .all(|(i, &x)| x == self.0 + i as u64));
            self.0
        }
        fn id(&self) -> u64 {
            self.0
        }
    }
    impl Shape for Unit {
        fn check(&self) -> u64 {
            u64::MAX
        }
        fn id(&self) -> u64 {
            u64::MAX
        }
    }
    let mut shapes: Vec<Box<dyn Shape>> = Vec::new();
    for i in 0..4000u64 {
        shapes.push(match i % 4 {
            0 => Box::new(A64(i, [i as u8; 10])),
            1 => Box::new(Page(i, [i; 3])),
            2 => Box::new(Big(i, (i..i + (i % 50) * 100).collect())),
            _ => Box::new(Unit),
        });
    }
    // Drop every third, check the rest, drop all.
    let mut i = 0;
    shapes.retain(|_| {
        i += 1;
        i % 3 != 0
    });
    for s in &shapes {
        assert_eq!(s.check(), s.id());
    }
    let ids: Vec<u64> = shapes
        .iter()
        .map(|s| s.id())
        .filter(|&x| x != u64::MAX)
        .collect();
    assert_eq!(
        ids.len(),
        (0..4000u64)
            .filter(|i| i % 4 != 3 && (i + 1) % 3 != 0)
            .count()
    );
}

#[test]
fn deep_clones_are_independent() {
    let mut rng = Rng::new(9);
    type Item = (String, BTreeMap<u32, Vec<u16>>, VecDeque<Box<u64>>);
    let original: Vec<Item> = (0..2000)
        .map(|i| {
            let m: BTreeMap<u32, Vec<u16>> = (0..rng.range(0, 20) as u32)
                .map(|k| (k, (0..k as u16).collect()))
                .collect();
            let d: VecDeque<Box<u64>> = (0..rng.range(0, 10) as u64).map(Box::new).collect();
            (format!("item {i}"), m, d)
        })
        .collect();
    let mut copy = original.clone();
    assert!(copy == original);
    for (s, m, d) in copy.iter_mut() {
        s.push_str(" (changed)");
        for v in m.values_mut() {
            v.iter_mut().for_each(|x| *x = x.wrapping_add(1));
        }
        d.iter_mut().for_each(|b| **b += 1000);
    }
    for (i, ((s, m, d), (cs, cm, cd))) in original.iter().zip(&copy).enumerate() {
        assert_eq!(
            *s,
            format!("item {i}"),
            "original changed through its clone"
        );
        assert_eq!(*cs, format!("item {i} (changed)"));
        for (k, v) in m {
            assert!(v.iter().copied().eq(0..*k as u16));
            assert!(cm[k].iter().copied().eq(1..*k as u16 + 1));
        }
        assert!(d.iter().map(|b| **b).eq(0..d.len() as u64));
        assert!(cd.iter().map(|b| **b).eq(1000..1000 + d.len() as u64));
    }
    drop(copy);
    assert_invariants("after clones");
}

#[test]
fn collections_built_in_threads_and_dropped_in_main() {
    let handles: Vec<_> = (0..8u64)
        .map(|t| {
            std::thread::spawn(move || {
                let m: HashMap<u64, String> = (0..5000).map(|k| (k, format!("{t}:{k}"))).collect();
                let v: Vec<u64> = (0..50_000).map(|k| k * t).collect();
                let s: BTreeSet<String> = (0..2000).map(|k| format!("{k:06}")).collect();
                (t, m, v, s)
            })
        })
        .collect();
    for h in handles {
        let (t, m, v, s) = h.join().unwrap();
        assert!((0..5000).all(|k| m[&k] == format!("{t}:{k}")));
        assert!(v.iter().enumerate().all(|(k, &x)| x == k as u64 * t));
        assert!(s.iter().zip(0..).all(|(x, k)| *x == format!("{k:06}")));
    }
    assert_invariants("after dropping collections of exited threads");
}
