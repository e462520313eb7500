-- audiotailoc: an e-commerce and service-booking back end (NestJS, Prisma).
-- The tables walbust watches, as the Prisma migrations create them: the
-- Prisma models map to snake_case tables and columns (@@map, @map), and ids
-- are text (cuid()).
--
-- Replica identity, table by table: a rule that reads a column's OLD value
-- (every placeholder on DELETE; both sides of an UPDATE; `changed:`) needs
-- Postgres to send the old row. Under the default identity a DELETE carries
-- only the primary key and an UPDATE no old row unless the key changed;
-- REPLICA IDENTITY FULL sends the whole old row.

CREATE TABLE categories (
    id         text PRIMARY KEY,
    name       text NOT NULL,
    slug       text NOT NULL UNIQUE,
    parent_id  text REFERENCES categories (id),
    sort_order integer NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Default identity: its rule has no placeholder.

CREATE TABLE products (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    slug        text NOT NULL UNIQUE,
    category_id text NOT NULL REFERENCES categories (id),
    price       bigint NOT NULL CHECK (price >= 0),   -- VND, no minor unit
    stock       integer NOT NULL DEFAULT 0,
    is_active   boolean NOT NULL DEFAULT true,
    is_featured boolean NOT NULL DEFAULT false,
    images      jsonb NOT NULL DEFAULT '[]',
    description text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- `changed: [category_id, price, is_active, is_featured]` compares the old
-- row with the new one.
ALTER TABLE products REPLICA IDENTITY FULL;

CREATE TABLE services (
    id         text PRIMARY KEY,
    name       text NOT NULL,
    slug       text NOT NULL UNIQUE,
    base_price bigint NOT NULL CHECK (base_price >= 0),
    duration_minutes integer NOT NULL DEFAULT 60,
    is_active  boolean NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Default identity: its rule reads only `id`.

CREATE TABLE orders (
    id         text PRIMARY KEY,
    user_id    text NOT NULL,
    status     text NOT NULL DEFAULT 'PENDING'
               CHECK (status IN ('PENDING', 'PAID', 'SHIPPED', 'COMPLETED', 'CANCELLED')),
    total      bigint NOT NULL CHECK (total >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Default identity: an order never changes owner, so the update rule reads
-- {new.user_id}; orders are cancelled, never deleted.

CREATE TABLE bookings (
    id           text PRIMARY KEY,
    user_id      text NOT NULL,
    service_id   text NOT NULL REFERENCES services (id),
    status       text NOT NULL DEFAULT 'PENDING'
                 CHECK (status IN ('PENDING', 'CONFIRMED', 'DONE', 'CANCELLED')),
    scheduled_at timestamptz NOT NULL,
    notes        text,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
-- user_id of a deleted booking comes from the old row.
ALTER TABLE bookings REPLICA IDENTITY FULL;

CREATE TABLE promotions (
    id               text PRIMARY KEY,
    code             text NOT NULL UNIQUE,
    discount_percent integer NOT NULL CHECK (discount_percent BETWEEN 1 AND 100),
    starts_at        timestamptz NOT NULL,
    ends_at          timestamptz NOT NULL,
    is_active        boolean NOT NULL DEFAULT true
);
-- The old code of a renamed promotion, and the code of a deleted one.
ALTER TABLE promotions REPLICA IDENTITY FULL;

CREATE TABLE banners (
    id         text PRIMARY KEY,
    title      text NOT NULL,
    image_url  text NOT NULL,
    link_url   text,
    position   text NOT NULL CHECK (position IN ('home', 'products', 'services')),
    sort_order integer NOT NULL DEFAULT 0,
    is_active  boolean NOT NULL DEFAULT true
);
-- The old position of a moved banner, and the position of a deleted one.
ALTER TABLE banners REPLICA IDENTITY FULL;

CREATE TABLE site_config (
    key        text PRIMARY KEY,
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Default identity: its rule has no placeholder.
