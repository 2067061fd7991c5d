//! The lexical guard: a second check on a semantic match, for the differences a sentence-embedding model
//! scores as small but that change the answer.
//!
//! all-MiniLM-L6-v2 puts "Which is a good solar panel installer in Ojai, California?" and "... in Alhambra,
//! California?" at a cosine of 0.94, "1GB Nvidia GeForce 920m" and "2GB ..." at 0.98, "the best question that
//! I can ask" and "... can't ask" at 0.90: a threshold that lets paraphrases through lets these through too
//! (docs/SEMANTIC.md has the measurements). The guard refuses a match when the two texts
//!
//! - **name different numbers**: both contain numbers (digits) and not the same ones (`13 year old` /
//!   `12 year old`; a number that only one text has, such as an added year, is allowed);
//! - **name different entities**: in short texts (questions, ≤ 25 words each), each text has a capitalized
//!   word (not the first) that the other lacks, so one name was swapped for another (`Ojai` / `Alhambra`;
//!   a name only one side has is allowed: paraphrases add and drop context, and words sharing their first
//!   four letters count as the same, `India` / `Indian`);
//! - **differ in negation**: one is negated (`not`, `never`, `cannot`, `…n't`; not `… or not?`) and the other
//!   is not, while they share most of their content words, so the negation is the difference.
//!
//! Each rule was kept only where, on the evaluation data, it refused more wrong matches than right ones;
//! the guard is still a heuristic, which is why it only ever turns a hit into a miss (the function then
//! runs), never the reverse.

use std::collections::HashSet;
use std::fmt;

/// Texts longer than this many words are not checked for swapped names (answers and documents rephrase
/// their capitalized words far more than questions do).
const SHORT_TEXT_WORDS: usize = 25;

/// The share of content words two texts must have in common for a difference in negation to count.
const NEGATION_OVERLAP: f64 = 0.6;

/// Words that say nothing of the subject: neither entities (when capitalized) nor content.
const STOP_WORDS: &[&str] = &[
    "a", "an", "the", "of", "in", "on", "at", "to", "for", "from", "by", "with", "and", "or", "but", "is", "are",
    "was", "were", "be", "been", "being", "do", "does", "did", "how", "what", "why", "when", "where", "which", "who",
    "whom", "whose", "can", "could", "should", "would", "will", "shall", "may", "might", "must", "i", "you", "he",
    "she", "it", "we", "they", "me", "my", "your", "his", "her", "its", "our", "their", "this", "that", "these",
    "those", "there", "here", "as", "if", "than", "then", "so", "about", "into", "over", "under", "up", "down", "out",
    "off", "again", "very", "just", "also", "some", "any", "all", "each", "most", "more", "other", "such", "only",
    "own", "same", "too", "yes", "no", "not",
];

/// Why the guard refused a match.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// One text is negated and the other is not, and they are otherwise much alike.
    Negation,
    /// Both texts contain numbers, and not the same ones.
    Numbers {
        /// The numbers of the asked text, space-separated.
        asked: String,
        /// The numbers of the stored text.
        stored: String,
    },
    /// Each text names something the other does not.
    Entities {
        /// The names only the asked text has.
        asked: String,
        /// The names only the stored text has.
        stored: String,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Negation => f.write_str("one text is negated, the other is not"),
            Refusal::Numbers { asked, stored } => write!(f, "different numbers: {asked} / {stored}"),
            Refusal::Entities { asked, stored } => write!(f, "different names: {asked} / {stored}"),
        }
    }
}

/// Checks a semantic match between the `asked` text and the `stored` text it scored above the threshold
/// against: `Ok(())` to serve the stored entry, `Err` with the reason to treat the lookup as a miss.
pub fn check(asked: &str, stored: &str) -> Result<(), Refusal> {
    let (a, b) = (Words::of(asked), Words::of(stored));
    if a.negated() != b.negated() && a.content_overlap(&b) >= NEGATION_OVERLAP {
        return Err(Refusal::Negation);
    }
    let (na, nb) = (a.numbers(), b.numbers());
    if !na.is_empty() && !nb.is_empty() && na != nb {
        return Err(Refusal::Numbers { asked: sorted(&na), stored: sorted(&nb) });
    }
    if a.words.len() <= SHORT_TEXT_WORDS && b.words.len() <= SHORT_TEXT_WORDS {
        let (ea, eb) = (a.entities_missing_from(&b), b.entities_missing_from(&a));
        if !ea.is_empty() && !eb.is_empty() {
            return Err(Refusal::Entities { asked: sorted(&ea), stored: sorted(&eb) });
        }
    }
    Ok(())
}

/// [`check`] as a yes or no.
pub fn accepts(asked: &str, stored: &str) -> bool {
    check(asked, stored).is_ok()
}

fn sorted(set: &HashSet<String>) -> String {
    let mut items: Vec<&str> = set.iter().map(String::as_str).collect();
    items.sort_unstable();
    items.join(" ")
}

/// A text's words as written (for capitalization) and lowercased.
struct Words {
    words: Vec<String>,
    lower: Vec<String>,
}

impl Words {
    /// Splits into runs of letters and digits; an apostrophe between letters stays inside a word (`don't`),
    /// and so do `.` and `,` before a digit (`2.10.0`, `50,000`).
    fn of(text: &str) -> Words {
        let chars: Vec<char> = text.chars().map(|c| if c == '’' { '\'' } else { c }).collect();
        let mut words = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            if !chars[i].is_alphanumeric() {
                i += 1;
                continue;
            }
            let start = i;
            while i < chars.len() {
                let next = chars.get(i + 1).copied();
                let joins = match chars[i] {
                    c if c.is_alphanumeric() => true,
                    '\'' => chars[i - 1].is_alphabetic() && next.is_some_and(char::is_alphabetic),
                    '.' | ',' => next.is_some_and(|c| c.is_ascii_digit()),
                    _ => false,
                };
                if !joins {
                    break;
                }
                i += 1;
            }
            words.push(chars[start..i].iter().collect::<String>());
        }
        let lower = words.iter().map(|w| w.to_lowercase()).collect();
        Words { words, lower }
    }

    /// An odd number of negations (`not`, `never`, `cannot`, `…n't`), not counting a closing `or not`.
    fn negated(&self) -> bool {
        let negations = self
            .lower
            .iter()
            .enumerate()
            .filter(|(i, w)| {
                let tag = w.as_str() == "not" && *i > 0 && self.lower[i - 1] == "or";
                !tag && (matches!(w.as_str(), "not" | "never" | "cannot") || w.ends_with("n't"))
            })
            .count();
        negations % 2 == 1
    }

    fn content(&self) -> HashSet<&str> {
        self.lower.iter().map(String::as_str).filter(|w| !STOP_WORDS.contains(w) && !w.ends_with("n't")).collect()
    }

    /// Shared content words over all content words of the two texts (0 when neither has any).
    fn content_overlap(&self, other: &Words) -> f64 {
        let (a, b) = (self.content(), other.content());
        let union = a.union(&b).count();
        if union == 0 {
            0.0
        } else {
            a.intersection(&b).count() as f64 / union as f64
        }
    }

    /// Words with a digit, without thousands separators (`50,000` is `50000`).
    fn numbers(&self) -> HashSet<String> {
        self.lower.iter().filter(|w| w.chars().any(|c| c.is_ascii_digit())).map(|w| w.replace(',', "")).collect()
    }

    /// Capitalized words (not the first word, not stop words) with no related word in `other`.
    fn entities_missing_from(&self, other: &Words) -> HashSet<String> {
        self.words
            .iter()
            .zip(&self.lower)
            .skip(1)
            .filter(|(word, lower)| {
                word.chars().next().is_some_and(char::is_uppercase) && !STOP_WORDS.contains(&lower.as_str())
            })
            .map(|(_, lower)| lower.clone())
            .filter(|name| !other.lower.iter().any(|w| related(name, w)))
            .collect()
    }
}

/// The same word, or two words of at least four letters that share their first four (`india` /
/// `indian`, `photograph` / `photography`).
fn related(a: &str, b: &str) -> bool {
    let prefix = |w: &str| w.chars().take(4).collect::<String>();
    a == b || (a.chars().count() >= 4 && b.chars().count() >= 4 && prefix(a) == prefix(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paraphrases_pass() {
        for (a, b) in [
            ("How do I reset my password?", "I forgot my password, how can I change it?"),
            ("What are some ways to lose weight fast?", "How can I lose weight quickly?"),
            (
                "How did Donald Trump win the Presidential election?",
                "How did Donald Trump win the 2016 US Presidential Election?",
            ),
            ("Will Pokemon go be released in India?", "When will Pokemon GO release in the Indian market?"),
            ("Is the universe expanding or not?", "Is our universe expanding?"),
            ("Can I make over 50,000 a month?", "Can I make 50000 a month?"),
        ] {
            assert_eq!(check(a, b), Ok(()), "{a:?} / {b:?}");
            assert!(accepts(b, a), "{b:?} / {a:?}");
        }
    }

    #[test]
    fn swapped_numbers_are_refused() {
        let refusal =
            check("Is the 1GB Nvidia GeForce 920m good enough?", "Is the 2GB Nvidia GeForce 920m good enough?");
        assert_eq!(refusal, Err(Refusal::Numbers { asked: "1gb 920m".into(), stored: "2gb 920m".into() }));
        assert!(!accepts("Can I make over 50,000 a month playing poker?", "Can I make 40,000 a month playing poker?"));
        assert!(!accepts("What version 2.10.0 adds?", "What version 2.9.0 adds?"));
    }

    #[test]
    fn swapped_names_are_refused_in_short_texts_only() {
        let refusal = check(
            "Which is a good solar panel installation provider in Alhambra, California CA?",
            "Which is a good solar panel installation provider in Ojai, California CA?",
        );
        assert_eq!(refusal, Err(Refusal::Entities { asked: "alhambra".into(), stored: "ojai".into() }));
        assert!(!accepts(
            "Are tracer rounds legal in the state of Hawaii?",
            "Are tracer rounds legal in the state of Alaska?"
        ));
        let long =
            |place: &str| format!("{} Which is a good provider in {place}?", "Some context words here. ".repeat(6));
        assert!(accepts(&long("Alhambra"), &long("Ojai")), "not checked past 25 words");
    }

    #[test]
    fn a_flipped_negation_is_refused() {
        assert_eq!(
            check(
                "What is the best question that I can ask on Quora?",
                "What is the best question that I can't ask on Quora?"
            ),
            Err(Refusal::Negation)
        );
        assert!(!accepts("Why does my code compile?", "Why does my code never compile?"));
        // Negated on both sides, or only in a different question: not the guard's business.
        assert!(accepts("Why doesn't honey spoil?", "Why does honey never go bad?"));
        assert!(accepts("When you don't have time to cook, would you use a robot chef?", "Do you need a robot chef?"));
    }

    #[test]
    fn words_keep_contractions_versions_and_thousands_together() {
        let words = Words::of("Don’t run v2.10.0 on 50,000 rows, ok?");
        assert_eq!(words.words, ["Don't", "run", "v2.10.0", "on", "50,000", "rows", "ok"]);
        assert!(words.negated());
        assert_eq!(Words::of("").words.len(), 0);
    }
}
