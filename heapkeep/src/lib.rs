//! heapkeep — placeholder while the core heap is written (delegates to System).
use core::alloc::{GlobalAlloc, Layout};
pub struct HeapKeep;
unsafe impl GlobalAlloc for HeapKeep {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 { unsafe { std::alloc::System.alloc(l) } }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) { unsafe { std::alloc::System.dealloc(p, l) } }
}
#[cfg(feature = "invariants")]
pub fn check_invariants() -> Result<(), String> { Ok(()) }
