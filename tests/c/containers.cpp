// C++ standard containers and the operator new/delete family on heapkeep.
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

struct alignas(64) Wide { char b[64]; };

int main() {
    std::map<int, std::string> m;
    std::unordered_map<std::string, std::vector<int>> u;
    for (int i = 0; i < 20000; i++) {
        m[i] = std::to_string(i * 7);
        u[std::to_string(i % 997)].push_back(i);
    }
    long sum = 0;
    for (auto &kv : m) sum += kv.second.size();
    for (auto &kv : u) sum += kv.second.size();
    std::vector<std::unique_ptr<Wide>> w;
    for (int i = 0; i < 1000; i++) {
        w.emplace_back(new Wide());
        if (reinterpret_cast<uintptr_t>(w.back().get()) % 64 != 0) { std::puts("misaligned"); return 1; }
    }
    int *arr = new int[1000]();
    for (int i = 0; i < 1000; i++) sum += arr[i];
    delete[] arr;
    void *nt = ::operator new(100, std::nothrow);
    ::operator delete(nt, std::nothrow);
    std::printf("%ld\n", sum);
    return 0;
}
