//! Small text utilities shared by retrieval and answer generation:
//! word splitting, a compact stop-word list, English stemming, sentence
//! splitting and a stable (process-independent) hash.

use std::collections::BTreeSet;
use std::fmt;

use rust_stemmers::{Algorithm, Stemmer};

/// Function words that carry no topical signal. Deliberately short: the
/// generic stop-word lists (1,000+ entries) also drop words such as
/// "index", "value", "page" or "system", which matter a lot in a corpus
/// about databases and caching.
const STOP_WORDS: &[&str] = &[
    "a", "about", "after", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be", "because", "been",
    "before", "being", "between", "both", "but", "by", "can", "could", "did", "do", "does", "doing", "during", "each",
    "either", "else", "even", "every", "for", "from", "further", "had", "has", "have", "having", "he", "her", "here",
    "hers", "him", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "may", "me", "might",
    "more", "most", "much", "must", "my", "no", "nor", "not", "of", "off", "on", "once", "only", "or", "other", "our",
    "ours", "out", "over", "own", "same", "she", "should", "so", "some", "such", "than", "that", "the", "their",
    "theirs", "them", "then", "there", "these", "they", "this", "those", "through", "to", "too", "under", "until",
    "up", "very", "was", "we", "were", "what", "when", "where", "whether", "which", "while", "who", "whom", "why",
    "will", "with", "would", "you", "your", "yours",
];

/// Returns true for words in the compact stop list (input must be lowercase).
pub(crate) fn is_stop_word(word: &str) -> bool {
    STOP_WORDS.binary_search(&word).is_ok()
}

/// Lowercased alphanumeric runs of `text`, in order. Everything that is not
/// alphanumeric separates words, so `work_mem` yields `work` and `mem`.
pub(crate) fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase)
}

/// English (Porter2) stemmer plus stop-word filtering, used both as the BM25
/// tokenizer and for matching query terms against sentences.
pub(crate) struct TermAnalyzer {
    stemmer: Stemmer,
}

impl fmt::Debug for TermAnalyzer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TermAnalyzer").field("stemmer", &"english").finish()
    }
}

impl Default for TermAnalyzer {
    fn default() -> Self {
        Self { stemmer: Stemmer::create(Algorithm::English) }
    }
}

impl TermAnalyzer {
    /// Stemmed, stop-word-free terms of `text`, in order (duplicates kept).
    pub(crate) fn terms(&self, text: &str) -> Vec<String> {
        words(text).filter(|w| !is_stop_word(w)).map(|w| self.stemmer.stem(&w).into_owned()).collect()
    }

    /// Distinct stemmed terms of `text`.
    pub(crate) fn term_set(&self, text: &str) -> BTreeSet<String> {
        self.terms(text).into_iter().collect()
    }
}

impl bm25::Tokenizer for TermAnalyzer {
    fn tokenize(&self, input_text: &str) -> Vec<String> {
        self.terms(input_text)
    }
}

/// Splits prose into sentences on `.`, `!` or `?` followed by whitespace (or
/// the end of the text). Good enough for the hand-written corpus; it keeps
/// tokens such as `0.75`, `e.g` or `Box::pin` inside their sentence.
pub(crate) fn split_sentences(text: &str) -> Vec<&str> {
    let mut sentences = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if matches!(c, '.' | '!' | '?') {
            let at_boundary = match chars.peek() {
                None => true,
                Some((_, next)) => next.is_whitespace(),
            };
            if at_boundary {
                let end = i + c.len_utf8();
                let sentence = text[start..end].trim();
                if !sentence.is_empty() {
                    sentences.push(sentence);
                }
                start = end;
            }
        }
    }
    let rest = text[start..].trim();
    if !rest.is_empty() {
        sentences.push(rest);
    }
    sentences
}

/// Truncates `text` to at most `max_chars` characters on a word boundary,
/// appending an ellipsis when something was cut.
pub(crate) fn truncate_chars(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let cut: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    let cut = match cut.rfind(char::is_whitespace) {
        Some(pos) if pos > max_chars / 2 => &cut[..pos],
        _ => cut.as_str(),
    };
    format!("{}…", cut.trim_end_matches([',', ';', ':', ' ']))
}

/// 64-bit FNV-1a: stable across processes and platforms (unlike the std
/// `HashMap` hasher), so embeddings and simulated latencies are reproducible.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_words_are_sorted_for_binary_search() {
        assert!(STOP_WORDS.windows(2).all(|w| w[0] < w[1]));
        assert!(is_stop_word("the"));
        assert!(!is_stop_word("index"));
    }

    #[test]
    fn analyzer_stems_and_drops_stop_words() {
        let analyzer = TermAnalyzer::default();
        assert_eq!(analyzer.terms("The caching of indexes"), vec!["cach".to_string(), "index".to_string()]);
        assert_eq!(analyzer.terms("cached"), analyzer.terms("caching"));
    }

    #[test]
    fn sentences_split_on_terminal_punctuation_only() {
        let s = split_sentences("Set b to 0.75 here. Use Box::pin! Done? yes");
        assert_eq!(s, vec!["Set b to 0.75 here.", "Use Box::pin!", "Done?", "yes"]);
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        let t = truncate_chars("héllo wörld and more words here", 12);
        assert!(t.chars().count() <= 12);
        assert!(t.ends_with('…'));
        assert_eq!(truncate_chars("short", 10), "short");
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
