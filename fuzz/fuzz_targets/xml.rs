//! The XML readers on arbitrary text: they never panic, never expand entities beyond the
//! predefined five, and what they accept writes back to XML that reads the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2ppi_hub::protocol::xml::{AppInvite, ContactData};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(contact) = ContactData::parse(text) {
        // Reading bounds what it returns by what it was given.
        assert!(contact.peer_name.len() <= text.len());
        let again = ContactData::parse(&contact.to_xml()).expect("written contact data reads back");
        assert_eq!(ContactData::parse(&again.to_xml()).as_ref(), Ok(&again));
    }
    if let Ok(invite) = AppInvite::parse(text) {
        let xml = match &invite {
            AppInvite::Request(r) => r.to_xml(),
            AppInvite::Ack(a) => a.to_xml(),
        };
        let again = AppInvite::parse(&xml).expect("a written invitation reads back");
        assert_eq!(again.invitation_id(), invite.invitation_id());
    }
});
