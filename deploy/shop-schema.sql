-- The example shop's tables, as rules.yaml and deploy/postgres-setup.sql
-- assume them. For trying the deploy folder on a scratch database:
--   createdb shop && psql -d shop -f deploy/shop-schema.sql \
--     && psql -d shop -f deploy/postgres-setup.sql
CREATE TABLE public.categories (
    id        bigint PRIMARY KEY,
    parent_id bigint REFERENCES public.categories (id),
    slug      text NOT NULL UNIQUE,
    name      text NOT NULL
);

CREATE TABLE public.products (
    id          bigint PRIMARY KEY,
    category_id bigint NOT NULL REFERENCES public.categories (id),
    slug        text NOT NULL UNIQUE,
    name        text NOT NULL,
    price       numeric(12, 2) NOT NULL,
    stock       integer NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.users (
    id         bigint PRIMARY KEY,
    email      text NOT NULL UNIQUE,
    name       text NOT NULL,
    deleted_at timestamptz
);

CREATE TABLE public.orders (
    id         bigint PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES public.users (id),
    status     text NOT NULL,
    total      numeric(12, 2) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
