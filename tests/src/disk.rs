//! A small filesystem for the "full disk" fault: tmpfs of a given size, or,
//! where tmpfs cannot be mounted, an ext4 image on a loop device. Mounting
//! needs root (the tests run as root here and in CI); when neither works the
//! caller gets an error naming both reasons, so the test fails instead of
//! skipping.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// A mounted small filesystem; unmounted on drop.
pub struct SmallDisk {
    path: PathBuf,
    filler: PathBuf,
    _dir: tempfile::TempDir,
}

fn run(cmd: &mut Command) -> Result<(), String> {
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "{:?} exited {}: {}",
            cmd,
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("{cmd:?}: {e}")),
    }
}

impl SmallDisk {
    /// Mounts `size_kb` KiB: tmpfs first, else a loop-mounted ext4 file.
    pub fn mount(size_kb: u64) -> anyhow::Result<SmallDisk> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path)?;
        let tmpfs = run(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size_kb}k"))
            .arg("tmpfs")
            .arg(&path));
        if let Err(tmpfs) = tmpfs {
            let img = dir.path().join("disk.img");
            let looped = std::fs::File::create(&img)
                .and_then(|f| f.set_len(size_kb.max(1024) * 1024))
                .map_err(|e| e.to_string())
                .and_then(|()| run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img)))
                .and_then(|()| {
                    run(Command::new("mount")
                        .args(["-o", "loop"])
                        .arg(&img)
                        .arg(&path))
                });
            if let Err(looped) = looped {
                bail!(
                    "cannot mount a small filesystem for the full-disk fault (needs root): \
                     tmpfs: {tmpfs}; loop file: {looped}"
                );
            }
        }
        Ok(SmallDisk {
            filler: path.join("filler"),
            path,
            _dir: dir,
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a filler file until the filesystem is full; returns its size.
    pub fn fill(&self) -> anyhow::Result<u64> {
        let mut f = std::fs::File::create(&self.filler).context("creating the filler")?;
        let block = vec![0xa5u8; 16 * 1024];
        let mut n = 0u64;
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(k) => n += k as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => return Err(e).context("filling the disk"),
            }
        }
        let _ = f.sync_all();
        Ok(n)
    }

    /// Removes the filler.
    pub fn free(&self) -> anyhow::Result<()> {
        std::fs::remove_file(&self.filler).context("removing the filler")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).output();
    }
}
