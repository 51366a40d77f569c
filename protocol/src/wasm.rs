//! WebAssembly-aware preprocessing for binary patches, after Courgette: a rebuild inserts and
//! removes functions and moves data, so the function indices, type and global indices and
//! memory addresses written in the code shift everywhere, and every shifted immediate breaks a
//! bsdiff match. The server learns [`Maps`] from old to new ([`learn`]); both ends rewrite the
//! old module's immediates with them ([`remap`]), so that unchanged code becomes byte-identical
//! to the new module's, and the patch is taken against that.
//!
//! [`walk`] is the one reader of module bytes both ends use, so they agree on every immediate;
//! it returns `None` for anything it does not know (a proposal it does not decode, a truncated
//! or invalid module), and the server then patches without it.

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::ops::Range;

use crate::varint;

/// The kinds of immediates that are rewritten.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Kind {
    /// `call`, `return_call`, `ref.func`.
    Func,
    /// The type of `call_indirect` and `return_call_indirect`.
    Type,
    /// `global.get`, `global.set`.
    Global,
    /// `i32.const`: memory addresses and table slots among other numbers.
    I32,
    /// `i64.const` (Go's code addresses, memory64 addresses).
    I64,
}

/// Where [`Maps::shifts`] keeps the shifts of `kind` (not [`Kind::Func`]).
fn shifted(kind: Kind) -> usize {
    match kind {
        Kind::Type => 0,
        Kind::Global => 1,
        Kind::I32 => 2,
        Kind::I64 | Kind::Func => 3,
    }
}

/// One immediate: where its LEB128 is in the module, its kind, its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Imm {
    /// The bytes of its LEB128.
    pub at: Range<usize>,
    /// What it names.
    pub kind: Kind,
    /// Its value (indices are non-negative).
    pub value: i64,
}

/// What [`walk`] finds besides the immediates.
#[derive(Debug, Default)]
pub struct Layout {
    /// Function imports, which come first in the function index space.
    pub imported_functions: u32,
    /// Each defined function's body (its locals and code), in index order.
    pub bodies: Vec<Range<usize>>,
}

/// A reader over `bytes` that keeps its absolute position.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn u64(&mut self) -> Option<u64> {
        // Most numbers in code are one byte.
        let first = *self.bytes.get(self.at)?;
        if first < 0x80 {
            self.at += 1;
            return Some(u64::from(first));
        }
        let mut rest = &self.bytes[self.at..];
        let before = rest.len();
        let n = varint::get(&mut rest)?;
        self.at += before - rest.len();
        Some(n)
    }

    /// Skips a number whose value is not needed (a local, a label, an alignment).
    fn skip_leb(&mut self) -> Option<()> {
        let rest = self.bytes.get(self.at..)?;
        let len = rest.iter().take(10).position(|b| b & 0x80 == 0)? + 1;
        self.at += len;
        Some(())
    }

    fn u32(&mut self) -> Option<u32> {
        u32::try_from(self.u64()?).ok()
    }

    fn s64(&mut self) -> Option<i64> {
        let (mut n, mut shift) = (0i64, 0);
        loop {
            let b = self.byte()?;
            if shift == 63 && b & 0x7e != 0 && b & 0x7e != 0x7e {
                return None;
            }
            n |= i64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                if shift < 64 && b & 0x40 != 0 {
                    n |= -1 << shift;
                }
                return Some(n);
            }
            if shift > 63 {
                return None;
            }
        }
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.bytes.len())?;
        self.at = end;
        Some(())
    }

    /// A value type: one byte, or a reference type's two parts.
    fn valtype(&mut self) -> Option<()> {
        if matches!(self.byte()?, 0x63 | 0x64) {
            self.s64()?;
        }
        Some(())
    }

    /// A block type: empty, a value type or a type index (s33), all read as one signed number.
    fn blocktype(&mut self) -> Option<()> {
        if matches!(self.bytes.get(self.at)?, 0x63 | 0x64) {
            return self.valtype();
        }
        self.s64().map(drop)
    }

    /// A memory access's alignment (with the multi-memory flag), memory and offset.
    fn memarg(&mut self) -> Option<()> {
        if self.u32()? & 0x40 != 0 {
            self.skip_leb()?;
        }
        self.skip_leb()
    }

    /// An immediate of `kind`, reported to `visit`.
    fn imm(&mut self, kind: Kind, visit: &mut impl FnMut(Imm)) -> Option<()> {
        let start = self.at;
        let value = match kind {
            Kind::I32 => i64::from(i32::try_from(self.s64()?).ok()?),
            Kind::I64 => self.s64()?,
            _ => i64::from(self.u32()?),
        };
        visit(Imm { at: start..self.at, kind, value });
        Some(())
    }
}

/// Every immediate of the [`Kind`]s in the module's code, in order, to `visit`; `None` if the
/// module is not one this reader walks to the end.
pub fn walk(module: &[u8], mut visit: impl FnMut(Imm)) -> Option<Layout> {
    let mut walker = Walker::new(module)?;
    while !walker.step(module, usize::MAX, &mut visit)? {}
    Some(walker.layout)
}

/// [`walk`] a part at a time, so that a client can yield between parts.
#[derive(Debug)]
pub struct Walker {
    at: usize,
    /// In the code section: its end, and the bodies still to walk.
    code: Option<(usize, u32)>,
    layout: Layout,
}

impl Walker {
    /// `None` if `module` is not a WebAssembly module (version 1).
    pub fn new(module: &[u8]) -> Option<Walker> {
        (module.get(..8)? == b"\0asm\x01\0\0\0").then_some(Walker {
            at: 8,
            code: None,
            layout: Layout::default(),
        })
    }

    /// Walks sections and function bodies, whole ones, until at least `budget` bytes are behind:
    /// `Some(true)` once the whole module is walked, `None` where it cannot be.
    pub fn step(&mut self, module: &[u8], budget: usize, visit: &mut impl FnMut(Imm)) -> Option<bool> {
        let mut r = Reader { bytes: module, at: self.at };
        let start = r.at;
        while r.at - start < budget {
            if let Some((end, left)) = &mut self.code {
                if *left == 0 {
                    (r.at == *end).then_some(())?;
                    self.code = None;
                    continue;
                }
                *left -= 1;
                let size = r.u32()? as usize;
                let body_end = r.at.checked_add(size).filter(|e| e <= end)?;
                self.layout.bodies.push(r.at..body_end);
                body(&mut r, body_end, visit)?;
                continue;
            }
            if r.at == module.len() {
                self.at = r.at;
                return Some(true);
            }
            let id = r.byte()?;
            let size = r.u32()? as usize;
            let end = r.at.checked_add(size).filter(|&end| end <= module.len())?;
            match id {
                10 => self.code = Some((end, r.u32()?)),
                2 => {
                    self.layout.imported_functions = imported_functions(&mut r)?;
                    (r.at <= end).then_some(())?;
                    r.at = end;
                }
                _ => r.at = end,
            }
        }
        self.at = r.at;
        Some(false)
    }
}

fn imported_functions(r: &mut Reader) -> Option<u32> {
    let mut functions = 0;
    for _ in 0..r.u32()? {
        for _ in 0..2 {
            let len = r.u32()? as usize;
            r.skip(len)?;
        }
        match r.byte()? {
            0x00 => {
                r.u32()?;
                functions += 1;
            }
            // The rest of the section is not needed; the caller moves to its end.
            _ => return Some(functions),
        }
    }
    Some(functions)
}

/// One function body: its locals, then instructions up to `end`.
fn body(r: &mut Reader, end: usize, visit: &mut impl FnMut(Imm)) -> Option<()> {
    for _ in 0..r.u32()? {
        r.u32()?;
        r.valtype()?;
    }
    while r.at < end {
        instruction(r, visit)?;
    }
    (r.at == end).then_some(())
}

fn instruction(r: &mut Reader, visit: &mut impl FnMut(Imm)) -> Option<()> {
    match r.byte()? {
        0x00 | 0x01 | 0x05 | 0x0a | 0x0b | 0x0f | 0x19 | 0x1a | 0x1b | 0x45..=0xc4 | 0xd1 | 0xd3 | 0xd4 => {}
        0x02..=0x04 | 0x06 => r.blocktype()?,
        0x07..=0x09 | 0x0c | 0x0d | 0x18 | 0x20..=0x22 | 0x25 | 0x26 | 0x3f | 0x40 | 0xd5 | 0xd6 => {
            r.skip_leb()?;
        }
        0x0e => {
            for _ in 0..=r.u32()? {
                r.skip_leb()?;
            }
        }
        0x10 | 0x12 | 0xd2 => r.imm(Kind::Func, visit)?,
        0x11 | 0x13 => {
            r.imm(Kind::Type, visit)?;
            r.skip_leb()?;
        }
        0x14 | 0x15 => {
            r.skip_leb()?;
        }
        0x1c => {
            for _ in 0..r.u32()? {
                r.valtype()?;
            }
        }
        0x1f => {
            r.blocktype()?;
            for _ in 0..r.u32()? {
                if r.byte()? < 2 {
                    r.skip_leb()?;
                }
                r.skip_leb()?;
            }
        }
        0x23 | 0x24 => r.imm(Kind::Global, visit)?,
        0x28..=0x3e => r.memarg()?,
        0x41 => r.imm(Kind::I32, visit)?,
        0x42 => r.imm(Kind::I64, visit)?,
        0x43 => r.skip(4)?,
        0x44 => r.skip(8)?,
        0xd0 => {
            r.s64()?;
        }
        0xfc => match r.u32()? {
            0..=7 => {}
            9 | 11 | 13 | 15..=17 => {
                r.skip_leb()?;
            }
            8 | 10 | 12 | 14 => {
                r.skip_leb()?;
                r.skip_leb()?;
            }
            _ => return None,
        },
        0xfd => match r.u32()? {
            0..=11 | 92 | 93 => r.memarg()?,
            12 | 13 => r.skip(16)?,
            21..=34 => r.skip(1)?,
            84..=91 => {
                r.memarg()?;
                r.skip(1)?;
            }
            14..=20 | 35..=83 | 94..=0x113 => {}
            _ => return None,
        },
        0xfe => match r.u32()? {
            3 => r.skip(1)?,
            0..=2 | 0x10..=0x4e => r.memarg()?,
            _ => return None,
        },
        _ => return None,
    }
    Some(())
}

/// The old -> new maps that [`remap`] applies. Functions: runs of consecutive old indices that
/// map to consecutive new ones, `(old start, new start, length)` sorted by old start; indices in
/// no run stay. The other kinds: piecewise-constant shifts, `(first old value, shift)` sorted by
/// value, a shift holding up to the next run's first value; values below the first stay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Maps {
    /// Function index runs.
    pub functions: Vec<(u32, u32, u32)>,
    /// Shifts of types, globals, `i32.const` and `i64.const` values, in that order.
    pub shifts: [Vec<(i64, i64)>; 4],
}

impl Maps {
    /// Where `value` of `kind` goes.
    pub fn map(&self, kind: Kind, value: i64) -> i64 {
        if kind == Kind::Func {
            let i = self.functions.partition_point(|&(start, _, _)| i64::from(start) <= value);
            return match i.checked_sub(1).map(|i| self.functions[i]) {
                Some((start, to, len)) if value < i64::from(start) + i64::from(len) => {
                    value - i64::from(start) + i64::from(to)
                }
                _ => value,
            };
        }
        let runs = &self.shifts[shifted(kind)];
        // Below the first run (most constants are small numbers, not addresses): as it is.
        if runs.first().is_none_or(|&(start, _)| value < start) {
            return value;
        }
        // At least the first run starts at or below `value`.
        let (_, shift) = runs[runs.partition_point(|&(start, _)| start <= value) - 1];
        let to = value.wrapping_add(shift);
        match kind {
            Kind::I32 => i64::from(to as i32),
            Kind::I64 => to,
            _ => u32::try_from(to).map_or(value, i64::from),
        }
    }

    /// The maps' bytes, as a patch carries them: each list's length, then its entries as
    /// differences from the previous one (zigzag LEB128).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        varint::put(&mut out, self.functions.len() as u64);
        let (mut old, mut new) = (0i64, 0i64);
        for &(start, to, len) in &self.functions {
            varint::put_signed(&mut out, i64::from(start) - old);
            varint::put_signed(&mut out, i64::from(to) - new);
            varint::put(&mut out, u64::from(len));
            (old, new) = (i64::from(start) + i64::from(len), i64::from(to) + i64::from(len));
        }
        for runs in &self.shifts {
            varint::put(&mut out, runs.len() as u64);
            let (mut value, mut shift) = (0i64, 0i64);
            for &(v, s) in runs {
                varint::put_signed(&mut out, v.wrapping_sub(value));
                varint::put_signed(&mut out, s.wrapping_sub(shift));
                (value, shift) = (v, s);
            }
        }
        out
    }

    /// The maps [`Maps::encode`] wrote; `None` if `bytes` are not such maps (truncated,
    /// trailing bytes, runs out of order or out of range).
    pub fn decode(mut bytes: &[u8]) -> Option<Maps> {
        let b = &mut bytes;
        let mut maps = Maps::default();
        let count = varint::get(b)?;
        let (mut old, mut new) = (0i64, 0i64);
        for _ in 0..count {
            let start = old.checked_add(varint::get_signed(b)?)?;
            let to = new.checked_add(varint::get_signed(b)?)?;
            let len = u32::try_from(varint::get(b)?).ok()?;
            let run = (u32::try_from(start).ok()?, u32::try_from(to).ok()?, len);
            if maps.functions.last().is_some_and(|&(s, _, l)| u64::from(s) + u64::from(l) > u64::from(run.0))
            {
                return None;
            }
            maps.functions.push(run);
            (old, new) = (start + i64::from(len), to + i64::from(len));
        }
        for runs in &mut maps.shifts {
            let (mut value, mut shift) = (0i64, 0i64);
            for _ in 0..varint::get(b)? {
                value = value.wrapping_add(varint::get_signed(b)?);
                shift = shift.wrapping_add(varint::get_signed(b)?);
                if runs.last().is_some_and(|&(v, _)| v >= value) {
                    return None;
                }
                runs.push((value, shift));
            }
        }
        b.is_empty().then_some(maps)
    }
}

/// The module with every immediate of the maps' kinds rewritten, each LEB128 as wide as it was
/// where the new value fits (compilers that leave room for relocations, as Go's does, write
/// indices five bytes wide); `None` if [`walk`] cannot walk it.
pub fn remap(module: &[u8], maps: &Maps) -> Option<Vec<u8>> {
    let mut remapping = Remapping::new(module, maps.clone())?;
    while !remapping.step(module, usize::MAX)? {}
    Some(remapping.take_output())
}

/// [`remap`] a part at a time, as a client does before applying a patch taken against the
/// remapped module.
#[derive(Debug)]
pub struct Remapping {
    walker: Walker,
    maps: Maps,
    out: Vec<u8>,
    /// The module's bytes up to here are in `out`.
    copied: usize,
}

impl Remapping {
    /// `None` if `module` is not a WebAssembly module.
    pub fn new(module: &[u8], maps: Maps) -> Option<Remapping> {
        let out = Vec::with_capacity(module.len() + module.len() / 64);
        Some(Remapping { walker: Walker::new(module)?, maps, out, copied: 0 })
    }

    /// Remaps about `budget` more bytes of `module` (always the same module): `Some(true)` when
    /// the whole of it is, `None` if it cannot be walked.
    pub fn step(&mut self, module: &[u8], budget: usize) -> Option<bool> {
        let Remapping { walker, maps, out, copied } = self;
        let done = walker.step(module, budget, &mut |imm: Imm| {
            let to = maps.map(imm.kind, imm.value);
            // Most immediates keep their value: their bytes are copied with the next change.
            if to == imm.value {
                return;
            }
            out.extend_from_slice(&module[*copied..imm.at.start]);
            match imm.kind {
                Kind::I32 | Kind::I64 => put_signed(out, to, imm.at.len()),
                _ => put_unsigned(out, to as u64, imm.at.len()),
            }
            *copied = imm.at.end;
        })?;
        if done {
            out.extend_from_slice(&module[*copied..]);
            *copied = module.len();
        }
        Some(done)
    }

    /// The remapped module, once [`Remapping::step`] said it is done.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }
}

fn put_unsigned(out: &mut Vec<u8>, mut v: u64, width: usize) {
    for written in 1.. {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 && written >= width {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_signed(out: &mut Vec<u8>, mut v: i64, width: usize) {
    for written in 1.. {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        let done = (v == 0 && byte & 0x40 == 0) || (v == -1 && byte & 0x40 != 0);
        if done && written >= width {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A module as [`learn`] sees it: memory is two numbers per immediate, not its place.
struct Parsed {
    imported: u32,
    /// Every body's immediates in order, `(kind, value)`; body `b`'s end at `ends[b]`.
    imms: Vec<(Kind, i64)>,
    ends: Vec<usize>,
    /// Each body's bytes without its immediates, hashed: equal for a function whose code did
    /// not change, however its callees, types, globals and addresses moved.
    prints: Vec<u64>,
}

impl Parsed {
    fn new(module: &[u8]) -> Option<Parsed> {
        let mut walker = Walker::new(module)?;
        let mut parsed = Parsed { imported: 0, imms: Vec::new(), ends: Vec::new(), prints: Vec::new() };
        let mut places: Vec<Range<usize>> = Vec::new();
        loop {
            // One body (or section header) a step, so that only its immediates' places are kept.
            places.clear();
            let done = walker.step(module, 1, &mut |imm: Imm| {
                places.push(imm.at);
                parsed.imms.push((imm.kind, imm.value));
            })?;
            if let Some(body) = walker.layout.bodies.get(parsed.prints.len()) {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                let mut at = body.start;
                for place in &places {
                    module[at..place.start].hash(&mut hasher);
                    at = place.end;
                }
                module[at..body.end].hash(&mut hasher);
                parsed.prints.push(hasher.finish());
                parsed.ends.push(parsed.imms.len());
            }
            if done {
                parsed.imported = walker.layout.imported_functions;
                return Some(parsed);
            }
        }
    }

    fn imms_of(&self, body: usize) -> &[(Kind, i64)] {
        let start = body.checked_sub(1).map_or(0, |b| self.ends[b]);
        &self.imms[start..self.ends[body]]
    }
}

/// How far past the last match [`learn`] looks for a function of the same code in a gap.
const GAP_SEARCH: usize = 64;

/// The maps that make `old` most like `new`, learned by the server from both: functions whose
/// code is the same but for its immediates are matched where that code is unique in both
/// modules; between two matched ones, each function with the next one of the same code, and
/// the others in order where both gaps are as long; then
/// each other kind's old values are mapped to the new ones seen in their place in matched
/// functions (the most frequent, where a value was seen with several), as runs of equal shifts.
/// `None` if either module cannot be walked.
pub fn learn(old: &[u8], new: &[u8]) -> Option<Maps> {
    let (o, n) = (Parsed::new(old)?, Parsed::new(new)?);
    let unique = |p: &Parsed| {
        let mut seen: HashMap<u64, Option<usize>> = HashMap::new();
        for (b, print) in p.prints.iter().enumerate() {
            seen.entry(*print).and_modify(|e| *e = None).or_insert(Some(b));
        }
        seen
    };
    let new_prints = unique(&n);
    let mut matched: Vec<(usize, usize)> = unique(&o)
        .into_iter()
        .filter_map(|(print, b)| Some((b?, new_prints.get(&print).copied()??)))
        .collect();
    matched.sort_unstable();
    let mut pairs = Vec::with_capacity(o.prints.len());
    for (i, &(ob, nb)) in matched.iter().enumerate() {
        pairs.push((ob, nb));
        let Some(&(next_o, next_n)) = matched.get(i + 1).filter(|&&(_, next_n)| next_n > nb) else {
            continue;
        };
        if next_o - ob == next_n - nb {
            // As many functions on both sides: changed ones, paired in order.
            pairs.extend((1..next_o - ob).map(|k| (ob + k, nb + k)));
            continue;
        }
        // Else each old function with the next new one of the same code (code that is not
        // unique in the module, such as small accessors), in order, and the functions between
        // two of those paired in order where both gaps are as long.
        let mut last = (ob, nb);
        for b in ob + 1..=next_o {
            let found = match b == next_o {
                true => Some(next_n),
                false => (last.1 + 1..next_n).take(GAP_SEARCH).find(|&c| n.prints[c] == o.prints[b]),
            };
            let Some(found) = found else { continue };
            if b - last.0 == found - last.1 {
                pairs.extend((1..b - last.0).map(|k| (last.0 + k, last.1 + k)));
            }
            if b < next_o {
                pairs.push((b, found));
            }
            last = (b, found);
        }
    }
    let mut maps = Maps::default();
    let (oi, ni) = (o.imported, n.imported);
    if oi == ni && oi > 0 {
        maps.functions.push((0, 0, oi));
    }
    let mut seen: HashMap<(Kind, i64), HashMap<i64, u32>> = HashMap::new();
    for &(ob, nb) in &pairs {
        let (from, to) = (oi + ob as u32, ni + nb as u32);
        match maps.functions.last_mut() {
            Some((start, target, len)) if *start + *len == from && *target + *len == to => *len += 1,
            _ => maps.functions.push((from, to, 1)),
        }
        if o.prints[ob] == n.prints[nb] {
            for (&(kind, from), &(_, to)) in o.imms_of(ob).iter().zip(n.imms_of(nb)) {
                if kind != Kind::Func {
                    *seen.entry((kind, from)).or_default().entry(to).or_default() += 1;
                }
            }
        }
    }
    maps.functions.retain(|&(start, to, _)| start != to);
    let mut observed: Vec<(Kind, i64, i64)> = seen
        .into_iter()
        .map(|((kind, value), to)| {
            let (to, _) =
                to.into_iter().max_by_key(|&(to, count)| (count, std::cmp::Reverse(to))).expect("seen");
            (kind, value, to.wrapping_sub(value))
        })
        .collect();
    observed.sort_unstable();
    for (kind, value, shift) in observed {
        let runs = &mut maps.shifts[shifted(kind)];
        if runs.last().map_or(shift != 0, |&(_, s)| s != shift) {
            runs.push((value, shift));
        }
    }
    Some(maps)
}

#[cfg(test)]
mod tests {
    use super::{Kind, Maps, Remapping, learn, remap, walk};

    /// A module of one type, one global and `bodies` (each its instructions, without the
    /// locals' count or the final `end`).
    fn module(bodies: &[Vec<u8>]) -> Vec<u8> {
        let section = |id: u8, content: Vec<u8>| {
            let mut s = vec![id];
            crate::varint::put(&mut s, content.len() as u64);
            s.extend(content);
            s
        };
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        m.extend(section(1, vec![1, 0x60, 0, 0]));
        m.extend(section(3, [vec![bodies.len() as u8], vec![0; bodies.len()]].concat()));
        m.extend(section(6, vec![1, 0x7f, 1, 0x41, 0, 0x0b]));
        let mut code = vec![bodies.len() as u8];
        for body in bodies {
            code.push(body.len() as u8 + 2);
            code.push(0);
            code.extend(body);
            code.push(0x0b);
        }
        m.extend(section(10, code));
        m
    }

    /// `f32.const tag; drop; i32.const addr; drop; global.get 0; drop; call callee; loop; br 0;
    /// end`, the callee as a five-byte padded LEB128, as Go writes its indices.
    fn caller(tag: u8, callee: u8, addr: u8) -> Vec<u8> {
        let mut body = vec![0x43, tag, 0, 0, 0, 0x1a, 0x41, addr, 0x1a, 0x23, 0, 0x1a];
        body.extend([0x10, callee | 0x80, 0x80, 0x80, 0x80, 0, 0x03, 0x40, 0x0c, 0, 0x0b]);
        body
    }

    fn leaf(n: u8) -> Vec<u8> {
        vec![
            0x41, n, 0x1a, 0x43, 1, 2, 3, 4, 0x1a, 0xfd, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, n,
            0x1a,
        ]
    }

    #[test]
    fn the_walker_finds_each_immediate_of_the_rewritten_kinds_and_skips_the_rest() {
        let m = module(&[caller(1, 1, 0x20), leaf(5)]);
        let mut found = Vec::new();
        let layout = walk(&m, |imm| found.push((imm.kind, imm.value, imm.at.len()))).unwrap();
        assert_eq!(layout.bodies.len(), 2);
        assert_eq!(
            found,
            [(Kind::I32, 0x20, 1), (Kind::Global, 0, 1), (Kind::Func, 1, 5), (Kind::I32, 5, 1)]
        );
    }

    #[test]
    fn modules_the_walker_does_not_know_are_refused_not_guessed() {
        let m = module(&[caller(1, 1, 0x20), leaf(5)]);
        assert!(walk(&m[..m.len() - 3], |_| {}).is_none(), "truncated");
        assert!(walk(b"not wasm at all", |_| {}).is_none());
        // A GC instruction (the 0xfb prefix), which the walker does not decode.
        let gc = module(&[vec![0xfb, 0x00, 0x00]]);
        assert!(walk(&gc, |_| {}).is_none());
        assert!(remap(&gc, &Maps::default()).is_none());
    }

    /// The new build inserts a function before the others and moves the data by 16 bytes: the
    /// old module remapped with the learned maps holds the new one's bodies byte for byte.
    #[test]
    fn learned_maps_make_the_old_modules_unchanged_code_identical_to_the_new() {
        let old = module(&[caller(1, 1, 0x20), leaf(5), caller(2, 0, 0x28)]);
        let new = module(&[leaf(9), caller(1, 2, 0x30), leaf(5), caller(2, 1, 0x38)]);
        let maps = learn(&old, &new).unwrap();
        assert_eq!(Maps::decode(&maps.encode()).as_ref(), Some(&maps));
        let remapped = remap(&old, &maps).unwrap();
        assert_ne!(caller(1, 2, 0x30), caller(1, 1, 0x20));
        for body in [caller(1, 2, 0x30), caller(2, 1, 0x38)] {
            assert!(remapped.windows(body.len()).any(|w| w == body), "{body:x?} in the remapped module");
        }
        assert_eq!(remapped.len(), old.len(), "padded indices keep their width");
        // A byte at a time, as a client remaps between yields, gives the same module.
        let mut sliced = Remapping::new(&old, maps.clone()).unwrap();
        while !sliced.step(&old, 1).unwrap() {}
        assert_eq!(sliced.take_output(), remapped);
        assert_eq!(remap(&old, &Maps::default()).unwrap(), old);
    }

    /// Two functions of the same code (not unique, so not matched by it alone) between two
    /// matched ones, with a function inserted before them: each is paired with the next new one
    /// of its code, and the calls to them are remapped.
    #[test]
    fn functions_of_the_same_code_between_matched_ones_are_paired_in_order() {
        let old = module(&[caller(1, 1, 0x20), leaf(5), leaf(5), caller(2, 2, 0x20)]);
        let new = module(&[caller(1, 2, 0x20), leaf(9), leaf(5), leaf(5), caller(2, 3, 0x20)]);
        let remapped = remap(&old, &learn(&old, &new).unwrap()).unwrap();
        for body in [caller(1, 2, 0x20), caller(2, 3, 0x20)] {
            assert!(remapped.windows(body.len()).any(|w| w == body), "{body:x?} in the remapped module");
        }
    }

    #[test]
    fn maps_bytes_that_are_not_maps_are_refused() {
        let maps = Maps {
            functions: vec![(3, 4, 10), (20, 30, 2)],
            shifts: [vec![], vec![(1, 2)], vec![(-5, 16), (1 << 20, -8)], vec![]],
        };
        let bytes = maps.encode();
        assert_eq!(Maps::decode(&bytes), Some(maps.clone()));
        for end in 0..bytes.len() {
            assert_eq!(Maps::decode(&bytes[..end]), None, "cut at {end}");
        }
        assert_eq!(Maps::decode(&[bytes.clone(), vec![0]].concat()), None, "trailing bytes");
        let overlapping = Maps { functions: vec![(3, 4, 10), (5, 30, 2)], ..Maps::default() };
        assert_eq!(Maps::decode(&overlapping.encode()), None);
        assert_eq!(maps.map(Kind::Func, 12), 13);
        assert_eq!(maps.map(Kind::Func, 13), 13, "between runs");
        assert_eq!(maps.map(Kind::I32, -6), -6, "below the first shift");
        assert_eq!(maps.map(Kind::I32, 100), 116);
        assert_eq!(maps.map(Kind::I32, i64::from(i32::MAX)), i64::from(i32::MAX - 8), "within i32");
    }
}
