import ctypes

from stepentropy_rl import heap


def test_freed_memory_is_kept_inside_and_released_after(monkeypatch):
    """The thresholds are raised inside, glibc's defaults are back after, and the heap is trimmed once; without
    glibc it is a no-op that says so."""
    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

        def malloc_trim(self, pad):
            calls.append(("trim", pad))
            return 1

    monkeypatch.setattr(heap, "_libc", lambda: FakeLibc())
    with heap.freed_memory_kept(1 << 20) as kept:
        assert kept and calls == [(heap.M_MMAP_THRESHOLD, 1 << 20), (heap.M_TRIM_THRESHOLD, 2**31 - 1)]
    assert calls[2:] == [(heap.M_MMAP_THRESHOLD, heap.GLIBC_DEFAULT), (heap.M_TRIM_THRESHOLD, heap.GLIBC_DEFAULT),
                         ("trim", 0)]
    monkeypatch.setattr(heap, "_libc", lambda: None)
    with heap.freed_memory_kept() as kept:
        assert kept is False
    assert heap.keep_freed_memory() is False


def test_the_real_libc_accepts_the_settings():
    libc = heap._libc()
    if libc is None:  # not glibc: nothing to check
        return
    with heap.freed_memory_kept() as kept:
        assert kept
        block = ctypes.create_string_buffer(8 << 20)  # an allocation above glibc's default mmap threshold
        assert len(block) == 8 << 20
