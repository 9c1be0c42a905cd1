//! Returns to the kernel the stack pages a socket thread touched while setting up, which its
//! long, shallow serving loop never uses again.
//!
//! A socket thread registers, subscribes and completes the handshake before it settles into
//! `poll`; that touches a few pages of stack that would otherwise stay resident for the
//! socket's whole life, in every one of thousands of threads.

use std::ffi::c_void;

use rustix::mm::{Advice, madvise};

/// Bytes kept below this function's frame: the calls it makes (the `madvise` wrapper, a few
/// hundred bytes) run there. The serving loop's frames, below its caller's, may re-touch
/// released pages; they come back zero-filled, as for any stack that grows.
const KEEP_BELOW: usize = 4 * 1024;

/// Releases the pages of this thread's stack more than [`KEEP_BELOW`] bytes below the caller's
/// frame. Their contents are dead (the stack grows down and nothing lives below its pointer);
/// if touched again they come back as zero-filled pages. Best effort: errors are ignored.
#[inline(never)]
pub fn release_unused() {
    let page = rustix::param::page_size();
    let Some(low) = stack_low() else {
        return;
    };
    let marker = 0u8;
    let here = std::hint::black_box(&raw const marker) as usize;
    let end = here.saturating_sub(KEEP_BELOW) & !(page - 1);
    // Above the guard page, whatever glibc reports as the stack's start.
    let start = (low + page).next_multiple_of(page);
    if end > start {
        // SAFETY: [start, end) lies inside this thread's own stack mapping, entirely below
        // the live frames (see above); MADV_DONTNEED on private anonymous memory only drops
        // the pages' contents.
        let _ = unsafe { madvise(start as *mut c_void, end - start, Advice::LinuxDontNeed) };
    }
}

/// The lowest address of this thread's stack.
fn stack_low() -> Option<usize> {
    // SAFETY: `attr` is initialised by pthread_getattr_np before it is read, and destroyed
    // once; `addr` and `size` are valid for writes.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let status = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        (status == 0).then_some(addr as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Touches about `bytes` of stack below the caller.
    #[inline(never)]
    fn go_deep(bytes: usize) -> u8 {
        let mut block = [0u8; 1024];
        std::hint::black_box(&mut block);
        if bytes > 1024 {
            go_deep(bytes - 1024).wrapping_add(block[7])
        } else {
            block[0]
        }
    }

    /// How many of the pages in [start, end) are resident.
    fn resident_pages(start: usize, end: usize) -> usize {
        let page = rustix::param::page_size();
        let pages = (end - start) / page;
        let mut flags = vec![0u8; pages];
        // SAFETY: [start, end) is page-aligned memory of this thread's stack mapping, and
        // `flags` has one byte per page for mincore to fill in.
        let status =
            unsafe { libc::mincore(start as *mut libc::c_void, end - start, flags.as_mut_ptr()) };
        assert_eq!(status, 0, "mincore: {}", std::io::Error::last_os_error());
        flags.iter().filter(|&&f| f & 1 == 1).count()
    }

    #[test]
    fn the_pages_a_deep_set_up_touched_are_given_back() {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let page = rustix::param::page_size();
                let low = (stack_low().unwrap() + page).next_multiple_of(page);
                let marker = 0u8;
                let here = (&raw const marker) as usize & !(page - 1);
                go_deep(96 * 1024);
                let deep = resident_pages(low, here - 8 * page);
                release_unused();
                let after = resident_pages(low, here - 8 * page);
                assert!(deep >= 16, "the set-up touched {deep} pages");
                assert_eq!(after, 0, "{after} of {deep} touched pages still resident");
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
