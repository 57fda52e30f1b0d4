//! The 48 steps of MD4 (RFC 1320) as a macro with a hook between every third
//! step, so that a kernel can interleave other work with one compression
//! (`peerdelta-protocol`'s portable chunker kernel and [`crate::RollingHash`]
//! both do). MD4 is one long dependency chain that leaves most of the CPU idle.

/// Message words of one block, little-endian.
#[inline(always)]
pub fn words(block: &[u8; 64]) -> [u32; 16] {
    let mut x = [0u32; 16];
    for (w, b) in x.iter_mut().zip(block.chunks_exact(4)) {
        *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    x
}

/// Expands to the 48 MD4 steps over state `a b c d` and words `x`, with
/// `$between` pasted after every third step (16 times, with `$k` = 0..15).
#[macro_export]
macro_rules! md4_steps {
    ($a:ident, $b:ident, $c:ident, $d:ident, $x:ident, |$k:ident| $between:block) => {{
        macro_rules! f1 {
            ($p:ident, $q:ident, $r:ident, $s:ident, $i:expr, $sh:expr) => {
                $p = $p
                    .wrapping_add(($q & $r) | (!$q & $s))
                    .wrapping_add($x[$i])
                    .rotate_left($sh)
            };
        }
        macro_rules! f2 {
            ($p:ident, $q:ident, $r:ident, $s:ident, $i:expr, $sh:expr) => {
                $p = $p
                    .wrapping_add(($q & $r) | ($q & $s) | ($r & $s))
                    .wrapping_add($x[$i])
                    .wrapping_add(0x5A82_7999)
                    .rotate_left($sh)
            };
        }
        macro_rules! f3 {
            ($p:ident, $q:ident, $r:ident, $s:ident, $i:expr, $sh:expr) => {
                $p = $p
                    .wrapping_add($q ^ $r ^ $s)
                    .wrapping_add($x[$i])
                    .wrapping_add(0x6ED9_EBA1)
                    .rotate_left($sh)
            };
        }
        macro_rules! between {
            ($kk:expr) => {{
                let $k: usize = $kk;
                $between
            }};
        }
        f1!($a, $b, $c, $d, 0, 3);
        f1!($d, $a, $b, $c, 1, 7);
        f1!($c, $d, $a, $b, 2, 11);
        between!(0);
        f1!($b, $c, $d, $a, 3, 19);
        f1!($a, $b, $c, $d, 4, 3);
        f1!($d, $a, $b, $c, 5, 7);
        between!(1);
        f1!($c, $d, $a, $b, 6, 11);
        f1!($b, $c, $d, $a, 7, 19);
        f1!($a, $b, $c, $d, 8, 3);
        between!(2);
        f1!($d, $a, $b, $c, 9, 7);
        f1!($c, $d, $a, $b, 10, 11);
        f1!($b, $c, $d, $a, 11, 19);
        between!(3);
        f1!($a, $b, $c, $d, 12, 3);
        f1!($d, $a, $b, $c, 13, 7);
        f1!($c, $d, $a, $b, 14, 11);
        between!(4);
        f1!($b, $c, $d, $a, 15, 19);
        f2!($a, $b, $c, $d, 0, 3);
        f2!($d, $a, $b, $c, 4, 5);
        between!(5);
        f2!($c, $d, $a, $b, 8, 9);
        f2!($b, $c, $d, $a, 12, 13);
        f2!($a, $b, $c, $d, 1, 3);
        between!(6);
        f2!($d, $a, $b, $c, 5, 5);
        f2!($c, $d, $a, $b, 9, 9);
        f2!($b, $c, $d, $a, 13, 13);
        between!(7);
        f2!($a, $b, $c, $d, 2, 3);
        f2!($d, $a, $b, $c, 6, 5);
        f2!($c, $d, $a, $b, 10, 9);
        between!(8);
        f2!($b, $c, $d, $a, 14, 13);
        f2!($a, $b, $c, $d, 3, 3);
        f2!($d, $a, $b, $c, 7, 5);
        between!(9);
        f2!($c, $d, $a, $b, 11, 9);
        f2!($b, $c, $d, $a, 15, 13);
        f3!($a, $b, $c, $d, 0, 3);
        between!(10);
        f3!($d, $a, $b, $c, 8, 9);
        f3!($c, $d, $a, $b, 4, 11);
        f3!($b, $c, $d, $a, 12, 15);
        between!(11);
        f3!($a, $b, $c, $d, 2, 3);
        f3!($d, $a, $b, $c, 10, 9);
        f3!($c, $d, $a, $b, 6, 11);
        between!(12);
        f3!($b, $c, $d, $a, 14, 15);
        f3!($a, $b, $c, $d, 1, 3);
        f3!($d, $a, $b, $c, 9, 9);
        between!(13);
        f3!($c, $d, $a, $b, 5, 11);
        f3!($b, $c, $d, $a, 13, 15);
        f3!($a, $b, $c, $d, 3, 3);
        between!(14);
        f3!($d, $a, $b, $c, 11, 9);
        f3!($c, $d, $a, $b, 7, 11);
        f3!($b, $c, $d, $a, 15, 15);
        between!(15);
    }};
}

/// One MD4 compression of `block` into `state`.
#[inline(always)]
pub fn compress(state: &mut [u32; 4], block: &[u8; 64]) {
    let x = words(block);
    let [mut a, mut b, mut c, mut d] = *state;
    md4_steps!(a, b, c, d, x, |_k| {});
    state[0] = state[0].wrapping_add(a);
    state[1] = state[1].wrapping_add(b);
    state[2] = state[2].wrapping_add(c);
    state[3] = state[3].wrapping_add(d);
}

/// A branch the compiler cannot see through. Called between groups of MD4
/// steps and the work interleaved with them, it splits the loop body into
/// basic blocks the compiler does not schedule across; left alone, it moves
/// the interleaved work together, away from the MD4 steps, which undoes the
/// interleaving. Costs a store, a load and a predicted branch.
#[inline(always)]
pub fn barrier() {
    if std::hint::black_box(false) {
        never();
    }
}

#[cold]
#[inline(never)]
fn never() {
    std::hint::black_box(());
}
