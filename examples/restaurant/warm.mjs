// What the example warmer (../warmer/warmer.mjs) recomputes for the
// restaurant app: the keys of rules with `refresh: true` in rules.yaml,
// each as the JSON document the application caches.
export const loaders = [
  {
    // The restaurant page.
    pattern: /^restaurant:(\d+)$/,
    sql: `SELECT json_build_object('id', id, 'name', name, 'cuisine', cuisine, 'is_open', is_open)::text
          FROM restaurants WHERE id = $1::bigint`,
  },
  {
    // The whole menu of a restaurant: its menus in order, with their items.
    pattern: /^restaurant:(\d+):menu$/,
    sql: `SELECT coalesce(json_agg(json_build_object(
                 'id', m.id, 'name', m.name,
                 'items', (SELECT coalesce(json_agg(json_build_object(
                                'id', i.id, 'name', i.name, 'price_cents', i.price_cents) ORDER BY i.id), '[]')
                           FROM menu_items i WHERE i.menu_id = m.id))
               ORDER BY m.position), '[]')::text
          FROM menus m WHERE m.restaurant_id = $1::bigint`,
  },
];
