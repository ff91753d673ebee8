-- Notification retention: the dispatcher deletes delivered, failed and inhibited deliveries
-- and routed notifications older than the retention, oldest first, a bounded batch a pass.
CREATE INDEX notification_deliveries_age ON notification_deliveries (created_at_ms);
CREATE INDEX notifications_age ON notifications (created_at_ms);
