//! What an Event's note may hold.

/// The apiserver rejects an Event whose note is longer than this many bytes.
pub const EVENT_NOTE_LIMIT: usize = 1024;

/// `note` cut to the Event limit on a character boundary, with an ellipsis when cut: an Event
/// the apiserver rejects says nothing at all.
pub fn event_note(mut note: String) -> String {
    const MORE: &str = "…";
    if note.len() <= EVENT_NOTE_LIMIT {
        return note;
    }
    let mut end = EVENT_NOTE_LIMIT - MORE.len();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note.truncate(end);
    note.push_str(MORE);
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_notes_are_cut_to_the_limit_on_a_character_boundary() {
        assert_eq!(event_note("short".into()), "short");
        let exact = "x".repeat(EVENT_NOTE_LIMIT);
        assert_eq!(event_note(exact.clone()), exact);
        // 'é' is two bytes: every cut point lands inside or after one.
        for pad in 0..3 {
            let long = format!("{}{}", "a".repeat(pad), "é".repeat(EVENT_NOTE_LIMIT));
            let note = event_note(long.clone());
            assert!(note.len() <= EVENT_NOTE_LIMIT, "{}", note.len());
            assert!(note.ends_with('…') && long.starts_with(note.trim_end_matches('…')));
        }
    }
}
