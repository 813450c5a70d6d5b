//! The allocator for training. Each step allocates and frees the same large tensors; glibc and
//! mimalloc's defaults hand freed memory back to the kernel, which then zeroes fresh pages on
//! the next step (a third of a small model's step time, measured with `perf`). Programs that
//! train declare `#[global_allocator] static A: recipe_kernels::Allocator = recipe_kernels::Allocator;`
//! and call [`retain_freed_memory`] when training starts (the trainer does): before it, what
//! tokenizing frees goes back to the system and does not add to the training's peak. On Apple platforms the system allocator
//! serves instead (mimalloc is C, and the Metal build is type-checked from Linux).

#[cfg(not(target_vendor = "apple"))]
pub use mimalloc::MiMalloc as Allocator;
#[cfg(target_vendor = "apple")]
pub use std::alloc::System as Allocator;

/// The system allocator has no such option.
#[cfg(target_vendor = "apple")]
pub fn retain_freed_memory() {}

// Indices of mimalloc's `mi_option_t` for the bundled mimalloc (libmimalloc-sys 0.1.49), whose
// bindings do not name these two.
#[cfg(not(target_vendor = "apple"))]
const PURGE_DECOMMITS: libmimalloc_sys::mi_option_t = 5;
#[cfg(not(target_vendor = "apple"))]
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Return what was freed so far to the kernel, then keep freed memory mapped for reuse.
#[cfg(not(target_vendor = "apple"))]
pub fn retain_freed_memory() {
    // Safety: collecting is always allowed; setting an option is a plain store in mimalloc,
    // and any value is valid for both.
    unsafe {
        libmimalloc_sys::mi_collect(true);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
        libmimalloc_sys::mi_option_set(PURGE_DECOMMITS, 0);
    }
}

#[cfg(all(test, not(target_vendor = "apple")))]
mod tests {
    #[test]
    fn the_option_indices_name_the_purge_options() {
        super::retain_freed_memory();
        // Safety: reading an option is a plain load.
        let (delay, decommits) = unsafe {
            (libmimalloc_sys::mi_option_get(super::PURGE_DELAY), libmimalloc_sys::mi_option_get(super::PURGE_DECOMMITS))
        };
        assert_eq!((delay, decommits), (-1, 0));
    }
}
