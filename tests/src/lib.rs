//! Integration tests for heapkeep live in tests/tests/.
