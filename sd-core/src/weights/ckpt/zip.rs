//! A strict reader for the zip archives `torch.save` writes.
//!
//! It reads the central directory (zip64 included: full SD checkpoints exceed 4 GiB), checks
//! every entry against its local header (same name, same method, data inside the file and
//! before the central directory, no two entries overlapping) and refuses encryption, unknown
//! flag bits, multi-disk archives and compression methods other than STORED (and DEFLATE,
//! which the caller may allow for `data.pkl` only). It never extracts anything to disk.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use crate::weights::pickle::{Limits, LoadError, LoadErrorKind as K, Location, ZipProblem as Z};

/// One validated entry.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) method: u16,
    pub(crate) crc: u32,
    pub(crate) compressed_size: u64,
    pub(crate) size: u64,
    pub(crate) header_start: u64,
    pub(crate) data_start: u64,
}

impl Entry {
    /// The entry's (possibly compressed) bytes.
    pub(crate) fn raw<'a>(&self, data: &'a [u8]) -> Result<&'a [u8], LoadError> {
        slice(data, self.data_start, self.compressed_size)
            .ok_or_else(|| zip_err(Z::OutOfBounds(self.name.clone())))
    }
}

fn zip_err(p: Z) -> LoadError {
    LoadError::new(K::Zip(p))
}

fn slice(data: &[u8], start: u64, len: u64) -> Option<&[u8]> {
    let s = usize::try_from(start).ok()?;
    let e = s.checked_add(usize::try_from(len).ok()?)?;
    data.get(s..e)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    let end = at.checked_add(2)?;
    Some(u16::from_le_bytes(b.get(at..end)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let end = at.checked_add(4)?;
    Some(u32::from_le_bytes(b.get(at..end)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let end = at.checked_add(8)?;
    Some(u64::from_le_bytes(b.get(at..end)?.try_into().ok()?))
}

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;
/// Flag bits torch writes: 3 (sizes in a data descriptor) and 11 (UTF-8 names).
const ALLOWED_FLAGS: u16 = 0x0008 | 0x0800;
/// Longest entry name accepted.
const MAX_NAME: usize = 1024;

struct Directory {
    entries: u64,
    cd_offset: u64,
    cd_size: u64,
    /// Where the central directory must end (start of the zip64 or plain EOCD).
    cd_limit: u64,
}

fn find_eocd(data: &[u8]) -> Result<Directory, LoadError> {
    let bad = |why| zip_err(Z::BadEndOfCentralDirectory(why));
    let len = data.len();
    let last = len
        .checked_sub(22)
        .ok_or_else(|| zip_err(Z::NoEndOfCentralDirectory))?;
    let first = last.saturating_sub(0xffff);
    let mut found = None;
    for pos in (first..=last).rev() {
        if u32_at(data, pos) == Some(EOCD_SIG) {
            let comment = u16_at(data, pos.saturating_add(20)).unwrap_or(0);
            // The comment must run exactly to the end of the file.
            if pos
                .checked_add(22)
                .and_then(|e| e.checked_add(usize::from(comment)))
                == Some(len)
            {
                found = Some(pos);
                break;
            }
        }
    }
    let pos = found.ok_or_else(|| zip_err(Z::NoEndOfCentralDirectory))?;
    let field16 = |o: usize| u16_at(data, pos.saturating_add(o)).unwrap_or(0);
    let field32 = |o: usize| u32_at(data, pos.saturating_add(o)).unwrap_or(0);
    let (disk, cd_disk) = (field16(4), field16(6));
    let (here, total) = (field16(8), field16(10));
    let (cd_size, cd_offset) = (field32(12), field32(16));
    let mut dir = Directory {
        entries: u64::from(total),
        cd_offset: u64::from(cd_offset),
        cd_size: u64::from(cd_size),
        cd_limit: pos as u64,
    };
    let locator = pos.checked_sub(20);
    let has_locator = locator.is_some_and(|l| u32_at(data, l) == Some(ZIP64_LOCATOR_SIG));
    if has_locator {
        let l = locator.unwrap_or(0);
        let z64_disk = u32_at(data, l.saturating_add(4)).unwrap_or(1);
        let z64_off = u64_at(data, l.saturating_add(8)).ok_or_else(|| bad("zip64 locator"))?;
        let disks = u32_at(data, l.saturating_add(16)).unwrap_or(0);
        if z64_disk != 0 || disks > 1 {
            return Err(zip_err(Z::MultiDisk));
        }
        let z = usize::try_from(z64_off).map_err(|_| bad("zip64 record offset"))?;
        if z64_off.checked_add(56).is_none_or(|e| e > l as u64) {
            return Err(bad("zip64 record offset"));
        }
        if u32_at(data, z) != Some(ZIP64_EOCD_SIG) {
            return Err(bad("zip64 record signature"));
        }
        let f32_ = |o: usize| u32_at(data, z.saturating_add(o)).unwrap_or(u32::MAX);
        let f64_ = |o: usize| u64_at(data, z.saturating_add(o)).unwrap_or(u64::MAX);
        if f32_(16) != 0 || f32_(20) != 0 || f64_(24) != f64_(32) {
            return Err(zip_err(Z::MultiDisk));
        }
        dir.entries = f64_(32);
        dir.cd_size = f64_(40);
        dir.cd_offset = f64_(48);
        dir.cd_limit = z64_off;
    } else {
        if disk != 0 || cd_disk != 0 || here != total {
            return Err(zip_err(Z::MultiDisk));
        }
        if total == 0xffff || cd_size == u32::MAX || cd_offset == u32::MAX {
            return Err(bad("zip64 values without a zip64 record"));
        }
    }
    Ok(dir)
}

fn check_name(name: &[u8]) -> Result<String, LoadError> {
    let lossy = || String::from_utf8_lossy(name.get(..MAX_NAME.min(name.len())).unwrap_or(&[]));
    let bad = || zip_err(Z::BadName(lossy().into_owned()));
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(bad());
    }
    if !name
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'\\')
    {
        return Err(bad());
    }
    if name.first() == Some(&b'/') {
        return Err(bad());
    }
    let s = std::str::from_utf8(name).map_err(|_| bad())?;
    if s.split('/').any(|c| c == ".." || c == ".") {
        return Err(bad());
    }
    Ok(s.to_string())
}

/// Reads and validates the central directory and every local header.
pub(crate) fn read_entries(data: &[u8], limits: &Limits) -> Result<Vec<Entry>, LoadError> {
    let bad = |why| zip_err(Z::BadEndOfCentralDirectory(why));
    let dir = find_eocd(data)?;
    if dir.entries > limits.max_entries {
        return Err(LoadError::new(K::LimitExceeded {
            limit: "max_entries",
            value: dir.entries,
        }));
    }
    let cd_end = dir
        .cd_offset
        .checked_add(dir.cd_size)
        .ok_or_else(|| bad("central directory size"))?;
    if cd_end > dir.cd_limit {
        return Err(bad("central directory runs past its end record"));
    }
    if dir.entries.checked_mul(46).is_none_or(|n| n > dir.cd_size) {
        return Err(bad("entry count does not fit the central directory"));
    }
    let cd = slice(data, dir.cd_offset, dir.cd_size).ok_or_else(|| bad("central directory"))?;
    let count = usize::try_from(dir.entries).map_err(|_| bad("entry count"))?;
    let mut entries = Vec::with_capacity(count);
    let mut p = 0usize;
    let hdr = |why| zip_err(Z::BadHeader(why));
    for _ in 0..count {
        if u32_at(cd, p) != Some(CENTRAL_SIG) {
            return Err(hdr("central directory signature"));
        }
        let f16 = |o: usize| u16_at(cd, p.saturating_add(o)).ok_or_else(|| hdr("short header"));
        let f32_ = |o: usize| u32_at(cd, p.saturating_add(o)).ok_or_else(|| hdr("short header"));
        let flags = f16(8)?;
        let method = f16(10)?;
        let crc = f32_(16)?;
        let mut comp = u64::from(f32_(20)?);
        let mut size = u64::from(f32_(24)?);
        let name_len = usize::from(f16(28)?);
        let extra_len = usize::from(f16(30)?);
        let comment_len = usize::from(f16(32)?);
        let disk_start = f16(34)?;
        let mut local = u64::from(f32_(42)?);
        let name_start = p.saturating_add(46);
        let name_end = name_start
            .checked_add(name_len)
            .ok_or_else(|| hdr("name length"))?;
        let raw_name = cd
            .get(name_start..name_end)
            .ok_or_else(|| hdr("name runs past the central directory"))?;
        let extra_end = name_end
            .checked_add(extra_len)
            .ok_or_else(|| hdr("extra length"))?;
        let extra = cd
            .get(name_end..extra_end)
            .ok_or_else(|| hdr("extra field runs past the central directory"))?;
        p = extra_end
            .checked_add(comment_len)
            .filter(|&e| e <= cd.len())
            .ok_or_else(|| hdr("comment runs past the central directory"))?;
        let name = check_name(raw_name)?;
        let loc = || Location::ZipEntry { name: name.clone() };
        if flags & 0x0041 != 0 {
            return Err(zip_err(Z::Encrypted).or_at(loc()));
        }
        if flags & !ALLOWED_FLAGS != 0 {
            return Err(zip_err(Z::UnsupportedFlags(flags)).or_at(loc()));
        }
        if method != 0 && !(method == 8 && limits.allow_deflate) {
            return Err(zip_err(Z::UnsupportedMethod(method)).or_at(loc()));
        }
        // zip64 extra field: the 0xFFFFFFFF fields, in this order.
        let need_size = size == u64::from(u32::MAX);
        let need_comp = comp == u64::from(u32::MAX);
        let need_local = local == u64::from(u32::MAX);
        let need_disk = disk_start == u16::MAX;
        if need_size || need_comp || need_local || need_disk {
            let mut q = 0usize;
            let mut z64 = None;
            while let (Some(id), Some(len)) = (u16_at(extra, q), u16_at(extra, q.saturating_add(2)))
            {
                let body_start = q.saturating_add(4);
                let body_end = body_start.saturating_add(usize::from(len));
                let body = extra
                    .get(body_start..body_end)
                    .ok_or_else(|| hdr("extra field"))?;
                if id == 1 {
                    z64 = Some(body);
                    break;
                }
                q = body_end;
            }
            let body = z64.ok_or_else(|| hdr("missing zip64 extra field"))?;
            let mut o = 0usize;
            let mut next = || {
                let v = u64_at(body, o).ok_or_else(|| hdr("short zip64 extra field"));
                o = o.saturating_add(8);
                v
            };
            if need_size {
                size = next()?;
            }
            if need_comp {
                comp = next()?;
            }
            if need_local {
                local = next()?;
            }
        } else if disk_start != 0 {
            return Err(zip_err(Z::MultiDisk).or_at(loc()));
        }
        if need_disk {
            return Err(zip_err(Z::MultiDisk).or_at(loc()));
        }
        if method == 0 && comp != size {
            return Err(hdr("stored entry with different sizes").or_at(loc()));
        }
        // The local header.
        let lh = usize::try_from(local).map_err(|_| zip_err(Z::OutOfBounds(name.clone())))?;
        if u32_at(data, lh) != Some(LOCAL_SIG) {
            return Err(hdr("local header signature").or_at(loc()));
        }
        let lf16 = |o: usize| {
            u16_at(data, lh.saturating_add(o)).ok_or_else(|| zip_err(Z::OutOfBounds(name.clone())))
        };
        let l_method = lf16(8)?;
        let l_name_len = usize::from(lf16(26)?);
        let l_extra_len = usize::from(lf16(28)?);
        if l_method != method {
            return Err(hdr("local header method differs").or_at(loc()));
        }
        let l_name_start = lh.saturating_add(30);
        let l_name = l_name_start
            .checked_add(l_name_len)
            .and_then(|e| data.get(l_name_start..e))
            .ok_or_else(|| zip_err(Z::OutOfBounds(name.clone())))?;
        if l_name != raw_name {
            return Err(zip_err(Z::NameMismatch {
                central: name.clone(),
                local: String::from_utf8_lossy(l_name).into_owned(),
            }));
        }
        let data_start = (l_name_start as u64)
            .checked_add(l_name_len as u64)
            .and_then(|x| x.checked_add(l_extra_len as u64))
            .ok_or_else(|| zip_err(Z::OutOfBounds(name.clone())))?;
        let data_end = data_start
            .checked_add(comp)
            .ok_or_else(|| zip_err(Z::OutOfBounds(name.clone())))?;
        if data_end > dir.cd_offset || data_end > data.len() as u64 {
            return Err(zip_err(Z::OutOfBounds(name.clone())));
        }
        entries.push(Entry {
            name,
            method,
            crc,
            compressed_size: comp,
            size,
            header_start: local,
            data_start,
        });
    }
    // No two entries may share bytes (overlapping entries are a classic way to make two zip
    // readers see different files).
    let mut order: Vec<(u64, u64)> = entries
        .iter()
        .map(|e| {
            (
                e.header_start,
                e.data_start.saturating_add(e.compressed_size),
            )
        })
        .collect();
    order.sort_unstable();
    for w in order.windows(2) {
        if let [a, b] = w
            && a.1 > b.0
        {
            return Err(zip_err(Z::Overlap));
        }
    }
    Ok(entries)
}

#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32 (IEEE), as zip uses it.
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    let mut c = u32::MAX;
    for &b in bytes {
        let idx = usize::from((c as u8) ^ b);
        c = CRC_TABLE.get(idx).copied().unwrap_or(0) ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }
}
