"""The output-folder lock: exclusive across processes and within one, not inherited by
forked children (a killed run's data-loader workers must not keep its folder), released
cleanly, a dead holder's lock taken over with a note, stale temp files removed."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from heat_fast._files import atomic_write_text
from heat_fast._output_folder import LOCK_NAME, OutputFolderError, claim

HOLD_WITH_A_FORKED_CHILD = textwrap.dedent("""
    import os, sys, time
    from heat_fast._output_folder import claim
    held = claim(sys.argv[1], "holder")
    if os.fork() == 0:  # a child, as a data-loader worker is, outliving its killed parent
        time.sleep(60)
        os._exit(0)
    print("held", flush=True)
    time.sleep(60)
""")


def test_a_killed_holders_lock_is_free_at_once_even_with_a_live_forked_child(tmp_path):
    folder = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WITH_A_FORKED_CHILD, str(folder)],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(OutputFolderError, match=rf"in use by another run: holder \(pid {holder.pid} "):
            claim(folder, "second")
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        with claim(folder, "second") as taken:  # the forked child still runs
            assert f"still locked by holder (pid {holder.pid}" in taken.note
            assert "no longer running" in taken.note
            assert (folder / LOCK_NAME).read_text().startswith(f"second (pid {os.getpid()} ")
        assert not (folder / LOCK_NAME).exists()
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # the child too


def test_one_claim_per_folder_within_a_process_and_release_undoes_creation(tmp_path):
    folder = tmp_path / "a" / "b"
    first = claim(folder, "first")
    assert first.note is None and folder.is_dir()
    with pytest.raises(OutputFolderError, match="in use by another run: first"):
        claim(folder, "second", flag="--out")
    with pytest.raises(OutputFolderError, match="in use"):  # the refusal kept the first lock
        claim(folder, "third")
    first.release()
    first.release()  # twice is harmless
    assert not folder.exists()  # created by the claim and left empty
    with claim(folder, "again"):
        atomic_write_text(folder / "kept.txt", "x")
    assert sorted(p.name for p in folder.iterdir()) == ["kept.txt"]


def test_stale_temp_files_are_removed_and_named(tmp_path):
    for name in (".last.pt.4242.tmp", ".metrics.jsonl.17.tmp", "notes.tmp", ".last.pt"):
        (tmp_path / name).write_text("x")
    with claim(tmp_path, "run") as held:
        note = held.remove_stale_temp_files()
        assert note.endswith(": .last.pt.4242.tmp, .metrics.jsonl.17.tmp")
        assert held.remove_stale_temp_files() is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [".last.pt", "notes.tmp"]
