//! Prompt editing and alternation: `[from:to:when]`, `[to:when]`, `[from::when]`, `[a|b|c]`.
//!
//! Follows AUTOMATIC1111 `modules/prompt_parser.py`: the lark grammar `schedule_parser` and
//! `get_learned_conditioning_prompt_schedules` (with its `collect_steps` and `at_step` helpers).
//!
//! The lark grammar is ambiguous (a bracket may be a construct or literal text at the top level); its Earley
//! parser resolves that by preferring the parse where constructs cover as much as possible. This module
//! reads a prompt left to right and takes, at each top-level `[` or `(`, the outermost construct that parses
//! completely there, keeping the bracket as text otherwise. On the reference corpus (including a few
//! hundred random strings over the special characters, `tests/fixtures/reference/prompt_cases.json`) this
//! gives the same schedules as lark. A `|` outside an alternation, or a `\` at the very end or before a line
//! break, makes the prompt unparseable and it is used literally, as A1111 does.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;

/// How the `when` of `[from:to:when]` maps to steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleOptions {
    /// Sampling steps of the (first) pass.
    pub steps: usize,
    /// Steps of a hires-fix second pass when the schedule is computed for it: integers then count from the
    /// start of the first pass (offset by `steps`) and numbers written with a `.` from 1.0 upwards address the
    /// second pass (`[a:b:1.5]` switches half-way through it).
    pub hires_steps: Option<usize>,
    /// A1111's "old prompt editing timelines" option: `when < 1` is a fraction, otherwise a step, and the
    /// hires pass uses the same numbers as the first pass.
    pub old_scheduling: bool,
}

impl ScheduleOptions {
    /// The usual case: one pass of `steps` steps.
    pub fn new(steps: usize) -> Self {
        ScheduleOptions {
            steps,
            hires_steps: None,
            old_scheduling: false,
        }
    }
}

/// One piece of a schedule: `text` is the prompt for every step up to and including `until_step`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleSegment {
    /// Last step (1-based) this text applies to.
    pub until_step: usize,
    /// The prompt text at those steps (emphasis brackets are left in place for the emphasis parser).
    pub text: String,
}

/// The texts a prompt takes over the steps, as `get_learned_conditioning_prompt_schedules` returns them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptSchedule {
    /// Segments ordered by `until_step`; the last one ends at the step count.
    pub segments: Vec<ScheduleSegment>,
}

impl PromptSchedule {
    /// The text to use at `step` (1-based): the first segment with `step <= until_step`, or the first segment
    /// when none matches (A1111 `reconstruct_cond_batch`).
    pub fn text_at_step(&self, step: usize) -> &str {
        self.segments
            .iter()
            .find(|s| step <= s.until_step)
            .or_else(|| self.segments.first())
            .map_or("", |s| s.text.as_str())
    }

    /// The index of the segment used at `step`, with the same rule as [`PromptSchedule::text_at_step`].
    pub fn segment_index_at_step(&self, step: usize) -> usize {
        self.segments
            .iter()
            .position(|s| step <= s.until_step)
            .unwrap_or(0)
    }
}

/// A parsed piece of prompt.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Scheduled {
        before: Option<Vec<Node>>,
        after: Vec<Node>,
        when: String,
    },
    Alternate(Vec<Vec<Node>>),
}

/// The construct at a position did not parse.
struct NoParse;

/// Deepest bracket nesting read; a prompt that nests deeper (or opens more brackets than this before the
/// first one fails) is used literally rather than risking the stack.
const MAX_DEPTH: usize = 200;

struct Parser<'a> {
    s: &'a str,
    /// Positions where a construct is known not to parse (a construct's result depends only on where it
    /// starts), so retrying a failed `[` at the top level stays linear.
    failed: RefCell<HashSet<usize>>,
    depth: Cell<usize>,
    /// Set when nesting exceeded [`MAX_DEPTH`]: the whole prompt is then unparseable.
    too_deep: Cell<bool>,
}

const SPECIAL: &[u8] = b"[]():|";

impl<'a> Parser<'a> {
    fn byte(&self, i: usize) -> Option<u8> {
        self.s.as_bytes().get(i).copied()
    }

    /// The end of the plain run starting at `i` (`([^\\\[\]():|]|\\.)+`), or `NoParse` for a `\` with nothing
    /// (or a line break) after it.
    fn plain_end(&self, mut i: usize) -> Result<usize, NoParse> {
        while let Some(b) = self.byte(i) {
            if SPECIAL.contains(&b) {
                break;
            }
            if b == b'\\' {
                let next = self.s[i + 1..].chars().next();
                match next {
                    None | Some('\n') => return Err(NoParse),
                    Some(c) => i += 1 + c.len_utf8(),
                }
            } else {
                i += 1;
            }
        }
        Ok(i)
    }

    /// `prompt`: plain text and constructs up to the next `] ) : |` or the end. Inside a construct a bracket
    /// that does not parse fails the whole construct.
    fn sequence(&self, mut i: usize) -> Result<(Vec<Node>, usize), NoParse> {
        let mut items = Vec::new();
        while let Some(b) = self.byte(i) {
            match b {
                b'[' | b'(' => {
                    let (mut nodes, next) = self.construct(i)?;
                    items.append(&mut nodes);
                    i = next;
                }
                b']' | b')' | b':' | b'|' => break,
                _ => {
                    let end = self.plain_end(i)?;
                    items.push(Node::Text(self.s[i..end].to_owned()));
                    i = end;
                }
            }
        }
        Ok((items, i))
    }

    /// `[WHITESPACE] NUMBER [WHITESPACE] "]"` starting at `i`: the number's text and the index after `]`.
    fn number_tail(&self, i: usize) -> Option<(String, usize)> {
        let rest = &self.s[i..];
        let trimmed = rest.trim_start_matches(is_lark_space);
        let start = i + rest.len() - trimmed.len();
        let len = number_len(trimmed)?;
        let after = &self.s[start + len..];
        let closing = after.trim_start_matches(is_lark_space);
        let close_at = start + len + after.len() - closing.len();
        (self.byte(close_at) == Some(b']'))
            .then(|| (self.s[start..start + len].to_owned(), close_at + 1))
    }

    /// A bracketed construct at `i` (`emphasized`, `scheduled` or `alternate`), as nodes.
    fn construct(&self, i: usize) -> Result<(Vec<Node>, usize), NoParse> {
        if self.failed.borrow().contains(&i) {
            return Err(NoParse);
        }
        if self.depth.get() >= MAX_DEPTH {
            self.too_deep.set(true);
            return Err(NoParse);
        }
        self.depth.set(self.depth.get() + 1);
        let result = self.construct_uncached(i);
        self.depth.set(self.depth.get() - 1);
        if result.is_err() && !self.too_deep.get() {
            self.failed.borrow_mut().insert(i);
        }
        result
    }

    fn construct_uncached(&self, i: usize) -> Result<(Vec<Node>, usize), NoParse> {
        if self.byte(i) == Some(b'(') {
            let (p1, j) = self.sequence(i + 1)?;
            let mut out = vec![Node::Text("(".into())];
            out.extend(p1);
            match self.byte(j) {
                Some(b')') => {
                    out.push(Node::Text(")".into()));
                    return Ok((out, j + 1));
                }
                Some(b':') => {
                    let (p2, k) = self.sequence(j + 1)?;
                    if self.byte(k) == Some(b')') {
                        out.push(Node::Text(":".into()));
                        out.extend(p2);
                        out.push(Node::Text(")".into()));
                        return Ok((out, k + 1));
                    }
                    return Err(NoParse);
                }
                _ => return Err(NoParse),
            }
        }
        let (p1, j) = self.sequence(i + 1)?;
        match self.byte(j) {
            Some(b']') => {
                let mut out = vec![Node::Text("[".into())];
                out.extend(p1);
                out.push(Node::Text("]".into()));
                Ok((out, j + 1))
            }
            Some(b'|') => {
                let mut options = vec![p1];
                let mut j = j;
                while self.byte(j) == Some(b'|') {
                    let (p, next) = self.sequence(j + 1)?;
                    options.push(p);
                    j = next;
                }
                if self.byte(j) == Some(b']') {
                    Ok((vec![Node::Alternate(options)], j + 1))
                } else {
                    Err(NoParse)
                }
            }
            Some(b':') => {
                if let Some((when, next)) = self.number_tail(j + 1) {
                    return Ok((
                        vec![Node::Scheduled {
                            before: None,
                            after: p1,
                            when,
                        }],
                        next,
                    ));
                }
                let (p2, k) = self.sequence(j + 1)?;
                if self.byte(k) == Some(b':')
                    && let Some((when, next)) = self.number_tail(k + 1)
                {
                    return Ok((
                        vec![Node::Scheduled {
                            before: Some(p1),
                            after: p2,
                            when,
                        }],
                        next,
                    ));
                }
                Err(NoParse)
            }
            _ => Err(NoParse),
        }
    }

    /// `start`: like `sequence`, but brackets and `:` that do not form a construct are kept as text.
    fn top(&self) -> Result<Vec<Node>, NoParse> {
        let mut items = Vec::new();
        let mut i = 0;
        while let Some(b) = self.byte(i) {
            match b {
                b'[' | b'(' => match self.construct(i) {
                    Ok((mut nodes, next)) => {
                        items.append(&mut nodes);
                        i = next;
                    }
                    Err(NoParse) if self.too_deep.get() => return Err(NoParse),
                    Err(NoParse) => {
                        items.push(Node::Text(char::from(b).to_string()));
                        i += 1;
                    }
                },
                b']' | b')' | b':' => {
                    items.push(Node::Text(char::from(b).to_string()));
                    i += 1;
                }
                b'|' => return Err(NoParse),
                _ => {
                    let end = self.plain_end(i)?;
                    items.push(Node::Text(self.s[i..end].to_owned()));
                    i = end;
                }
            }
        }
        Ok(items)
    }
}

/// lark's `WHITESPACE: /\s+/` (Python's Unicode `\s`).
fn is_lark_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Length of lark's `SIGNED_NUMBER` at the start of `s`: `[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?`.
fn number_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let digits = |mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    let int_end = digits(i);
    if int_end > i {
        i = int_end;
        if b.get(i) == Some(&b'.') {
            i = digits(i + 1);
        }
    } else if b.get(i) == Some(&b'.') {
        let frac_end = digits(i + 1);
        if frac_end == i + 1 {
            return None;
        }
        i = frac_end;
    } else {
        return None;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        let exp_end = digits(j);
        if exp_end > j {
            i = exp_end;
        }
    }
    Some(i)
}

/// Step conversion of `collect_steps`: the `when` text to a step number (may be ≤ 0).
fn when_step(when: &str, steps: usize, int_offset: f64, flt_offset: f64, old: bool) -> i64 {
    let mut v: f64 = when.parse().unwrap_or(0.0);
    let steps_f = steps as f64;
    if old {
        if v < 1.0 {
            v *= steps_f;
        }
    } else if when.contains('.') {
        v = (v - flt_offset) * steps_f;
    } else {
        v -= int_offset;
    }
    // Python's int() truncates toward zero; out-of-range values saturate here where Python would raise.
    let step = v.trunc() as i64;
    step.min(i64::try_from(steps).unwrap_or(i64::MAX))
}

struct Steps {
    steps: usize,
    int_offset: f64,
    flt_offset: f64,
    old: bool,
}

impl Steps {
    fn when(&self, when: &str) -> i64 {
        when_step(when, self.steps, self.int_offset, self.flt_offset, self.old)
    }

    fn collect(&self, nodes: &[Node], out: &mut Vec<usize>) {
        for n in nodes {
            match n {
                Node::Text(_) => {}
                Node::Scheduled {
                    before,
                    after,
                    when,
                } => {
                    if let Some(b) = before {
                        self.collect(b, out);
                    }
                    self.collect(after, out);
                    if let Ok(step) = usize::try_from(self.when(when))
                        && step >= 1
                    {
                        out.push(step);
                    }
                }
                Node::Alternate(options) => {
                    out.extend(1..=self.steps);
                    for o in options {
                        self.collect(o, out);
                    }
                }
            }
        }
    }

    fn text(&self, nodes: &[Node], step: usize, out: &mut String) {
        for n in nodes {
            match n {
                Node::Text(t) => out.push_str(t),
                Node::Scheduled {
                    before,
                    after,
                    when,
                } => {
                    let before_when = i64::try_from(step).is_ok_and(|s| s <= self.when(when));
                    if before_when {
                        if let Some(b) = before {
                            self.text(b, step, out);
                        }
                    } else {
                        self.text(after, step, out);
                    }
                }
                Node::Alternate(options) => {
                    if !options.is_empty() {
                        let k = (step + options.len() - 1) % options.len();
                        self.text(&options[k], step, out);
                    }
                }
            }
        }
    }
}

/// The schedule of `prompt` over `options.steps` steps (or the hires pass, see [`ScheduleOptions`]).
///
/// ```
/// use sd_core::prompt::{prompt_schedule, ScheduleOptions};
/// let s = prompt_schedule("a [b:c:3] d", &ScheduleOptions::new(10));
/// assert_eq!(s.text_at_step(3), "a b d");
/// assert_eq!(s.text_at_step(4), "a c d");
/// ```
pub fn prompt_schedule(prompt: &str, options: &ScheduleOptions) -> PromptSchedule {
    let (int_offset, flt_offset, steps) = match options.hires_steps {
        Some(hires) if !options.old_scheduling => (options.steps as f64, 1.0, hires),
        _ => (0.0, 0.0, options.steps),
    };
    let ctx = Steps {
        steps,
        int_offset,
        flt_offset,
        old: options.old_scheduling,
    };
    let parser = Parser {
        s: prompt,
        failed: RefCell::new(HashSet::new()),
        depth: Cell::new(0),
        too_deep: Cell::new(false),
    };
    let Ok(tree) = parser.top() else {
        return PromptSchedule {
            segments: vec![ScheduleSegment {
                until_step: steps,
                text: prompt.to_owned(),
            }],
        };
    };
    let mut bounds = vec![steps];
    ctx.collect(&tree, &mut bounds);
    bounds.sort_unstable();
    bounds.dedup();
    let segments = bounds
        .into_iter()
        .map(|until_step| {
            let mut text = String::new();
            ctx.text(&tree, until_step, &mut text);
            ScheduleSegment { until_step, text }
        })
        .collect();
    PromptSchedule { segments }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(prompt: &str, steps: usize, hires: Option<usize>) -> Vec<(usize, String)> {
        let opts = ScheduleOptions {
            steps,
            hires_steps: hires,
            old_scheduling: false,
        };
        prompt_schedule(prompt, &opts)
            .segments
            .into_iter()
            .map(|s| (s.until_step, s.text))
            .collect()
    }

    fn v(pairs: &[(usize, &str)]) -> Vec<(usize, String)> {
        pairs.iter().map(|(s, t)| (*s, (*t).to_owned())).collect()
    }

    /// The doctests of `get_learned_conditioning_prompt_schedules`. One differs from the docstring: A1111
    /// notes it does not handle `a [{b|d{:.5] c`, and lark rejects that prompt, so it is used literally.
    #[test]
    fn a1111_doctests() {
        assert_eq!(g("test", 10, None), v(&[(10, "test")]));
        assert_eq!(g("a [b:3]", 10, None), v(&[(3, "a "), (10, "a b")]));
        assert_eq!(g("a [b: 3]", 10, None), v(&[(3, "a "), (10, "a b")]));
        assert_eq!(g("a [[[b]]:2]", 10, None), v(&[(2, "a "), (10, "a [[b]]")]));
        assert_eq!(g("[(a:2):3]", 10, None), v(&[(3, ""), (10, "(a:2)")]));
        assert_eq!(
            g("a [b : c : 1] d", 10, None),
            v(&[(1, "a b  d"), (10, "a  c  d")])
        );
        assert_eq!(
            g("a[b:[c:d:2]:1]e", 10, None),
            v(&[(1, "abe"), (2, "ace"), (10, "ade")])
        );
        assert_eq!(g("a [unbalanced", 10, None), v(&[(10, "a [unbalanced")]));
        assert_eq!(g("a [b:.5] c", 10, None), v(&[(5, "a  c"), (10, "a b c")]));
        assert_eq!(g("a [{b|d{:.5] c", 10, None), v(&[(10, "a [{b|d{:.5] c")]));
        assert_eq!(
            g("((a][:b:c [d:3]", 10, None),
            v(&[(3, "((a][:b:c "), (10, "((a][:b:c d")])
        );
        let alt: Vec<(usize, &str)> = (1..=10)
            .map(|s| (s, if s % 2 == 1 { "a" } else { "(b:1.1)" }))
            .collect();
        assert_eq!(g("[a|(b:1.1)]", 10, None), v(&alt));
        let fe: Vec<(usize, &str)> = (1..=10)
            .map(|s| (s, if s % 2 == 1 { "female" } else { "male" }))
            .collect();
        assert_eq!(g("[fe|]male", 10, None), v(&fe));
        let fe4: Vec<(usize, &str)> = (1..=10)
            .map(|s| (s, if s % 4 == 1 { "female" } else { "male" }))
            .collect();
        assert_eq!(g("[fe|||]male", 10, None), v(&fe4));
        assert_eq!(g("a [b:.5] c", 10, Some(10)), v(&[(10, "a b c")]));
        assert_eq!(
            g("a [b:1.5] c", 10, Some(10)),
            v(&[(5, "a  c"), (10, "a b c")])
        );
    }

    #[test]
    fn deep_or_long_bracket_runs_stay_cheap() {
        // Unmatched openers: each failed attempt is remembered, so retrying at the next `[` is cheap.
        let opens = "[".repeat(150);
        let s = prompt_schedule(&format!("{opens}[a:b:2]"), &ScheduleOptions::new(4));
        assert_eq!(s.segments.len(), 2);
        assert_eq!(s.text_at_step(1), format!("{opens}a"));
        // Nesting deeper than MAX_DEPTH: used literally instead of overflowing the stack.
        for deep in [
            "[".repeat(200_000) + "[a:b:2]",
            format!("{}x{}", "[".repeat(100_000), "]".repeat(100_000)),
        ] {
            let s = prompt_schedule(&deep, &ScheduleOptions::new(4));
            let literal = ScheduleSegment {
                until_step: 4,
                text: deep.clone(),
            };
            assert_eq!(s.segments, vec![literal]);
        }
        let ok = format!("{}[x:y:2]{}", "(".repeat(150), ")".repeat(150));
        assert_eq!(
            prompt_schedule(&ok, &ScheduleOptions::new(4))
                .segments
                .len(),
            2
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(number_len("12]"), Some(2));
        assert_eq!(number_len("-1.5e3 ]"), Some(6));
        assert_eq!(number_len(".5"), Some(2));
        assert_eq!(number_len("1."), Some(2));
        assert_eq!(number_len("1e"), Some(1));
        assert_eq!(number_len("."), None);
        assert_eq!(number_len("x"), None);
    }

    #[test]
    fn text_at_step_and_fallbacks() {
        let s = prompt_schedule("[red|green|blue] ball", &ScheduleOptions::new(5));
        assert_eq!(s.text_at_step(1), "red ball");
        assert_eq!(s.text_at_step(3), "blue ball");
        assert_eq!(s.text_at_step(4), "red ball");
        assert_eq!(s.segment_index_at_step(99), 0);
        let lit = prompt_schedule("a | b [c:2]", &ScheduleOptions::new(5));
        assert_eq!(lit.segments.len(), 1);
        assert_eq!(lit.text_at_step(1), "a | b [c:2]");
        let bs = prompt_schedule("x [c:2] \\", &ScheduleOptions::new(5));
        assert_eq!(bs.segments.len(), 1);
    }
}
