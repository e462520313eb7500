-- such-market: an NFT marketplace for Farcaster users. The tables walbust
-- watches.
--
-- Addresses are stored lower case (the CHECK constraints): walbust puts
-- values into keys exactly as Postgres prints them and cannot change their
-- case, so the database holds the form the cache keys use.
--
-- Replica identity, table by table: a rule that reads a column's OLD value
-- (every placeholder on DELETE; both sides of an UPDATE; `changed:`) needs
-- Postgres to send the old row. Under the default identity a DELETE carries
-- only the primary key and an UPDATE no old row unless the key changed;
-- REPLICA IDENTITY FULL sends the whole old row.

CREATE TABLE collections (
    contract_address text PRIMARY KEY CHECK (contract_address = lower(contract_address)),
    name             text NOT NULL,
    symbol           text,
    chain            text NOT NULL DEFAULT 'base',
    total_supply     integer,
    floor_price_wei  numeric(78, 0),
    image_url        text,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
-- Default identity: its rule reads only contract_address, the primary key.

CREATE TABLE nfts (
    contract_address text NOT NULL REFERENCES collections (contract_address) ON DELETE CASCADE,
    token_id         numeric(78, 0) NOT NULL,
    owner_address    text NOT NULL CHECK (owner_address = lower(owner_address)),
    name             text,
    image_url        text,
    metadata         jsonb NOT NULL DEFAULT '{}',
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (contract_address, token_id)
);
-- REQUIRED: on a transfer the rules invalidate the OLD owner's collections
-- as well as the new one's. Under the default identity the UPDATE would
-- carry no old row (the primary key does not change) and the old owner's
-- summary would stay stale. FULL also gives `changed:` its old values.
ALTER TABLE nfts REPLICA IDENTITY FULL;

CREATE TABLE collection_traits (
    contract_address text NOT NULL REFERENCES collections (contract_address) ON DELETE CASCADE,
    trait_type       text NOT NULL,
    trait_value      text NOT NULL,
    token_count      integer NOT NULL DEFAULT 0,
    PRIMARY KEY (contract_address, trait_type, trait_value)
);
-- Default identity: contract_address is part of the primary key.

-- Farcaster users, by fid, with their custody and verified addresses.
CREATE TABLE fc_users (
    fid                bigint PRIMARY KEY,
    username           text NOT NULL,
    custody_address    text NOT NULL CHECK (custody_address = lower(custody_address)),
    verified_addresses text[] NOT NULL DEFAULT '{}',
    updated_at         timestamptz NOT NULL DEFAULT now()
);
-- Default identity: its rule reads only fid.

-- The indexer's view of which Farcaster user holds which token.
CREATE TABLE nft_ownership (
    fid              bigint NOT NULL REFERENCES fc_users (fid) ON DELETE CASCADE,
    contract_address text NOT NULL,
    token_id         numeric(78, 0) NOT NULL,
    acquired_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (contract_address, token_id, fid)
);
-- Default identity: every column the rule reads is in the primary key.

-- Per Farcaster user, how many tokens of each collection they hold.
CREATE TABLE user_collections (
    fid              bigint NOT NULL REFERENCES fc_users (fid) ON DELETE CASCADE,
    contract_address text NOT NULL,
    token_count      integer NOT NULL,
    PRIMARY KEY (fid, contract_address)
);
-- Default identity: fid is part of the primary key.

-- Per wallet, how many tokens of each collection it holds.
CREATE TABLE wallet_collection_mapping (
    wallet_address   text NOT NULL CHECK (wallet_address = lower(wallet_address)),
    contract_address text NOT NULL,
    token_count      integer NOT NULL,
    PRIMARY KEY (wallet_address, contract_address)
);
-- Default identity: wallet_address is part of the primary key.
